"""kube-xdp's resource model, shared by the operator and the agent.

No kernel access here. Most modules are pure (plain data in, plain data out): names,
schema (its `--write` CLI aside), spec, reasons, conditions, selectors, rbac, admission.
Four are not: fetch.py reads a program's source (a ConfigMap) through the Kubernetes
client, compat.py reads the API server's /version at start, events.py posts Events, and
workqueue.py runs on threads and the clock (no I/O).
- names.py       stable names: group, kinds, labels, finalizers, bpffs layout
- schema.py      the CRD schemas (the one source of truth for crds/ and the chart)
- spec.py        spec parsing and validation (defense in depth behind the schema)
- reasons.py     the catalogue of reasons (the only ones any writer accepts)
- conditions.py  condition helpers and kstatus
- selectors.py   label selector matching
"""

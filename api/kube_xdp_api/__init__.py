"""kube-xdp's resource model, shared by the operator and the agent.

This layer is pure: no Kubernetes client, no kernel access.
- names.py       stable names: group, kinds, labels, finalizers, bpffs layout
- schema.py      the CRD schemas (the one source of truth for crds/ and the chart)
- spec.py        spec parsing and validation (defense in depth behind the schema)
- reasons.py     the catalogue of condition reasons
- conditions.py  condition helpers and kstatus
- selectors.py   label selector matching
"""

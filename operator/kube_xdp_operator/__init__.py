"""kube-xdp's operator: places XdpPrograms on nodes and reports how they are doing.

Layers (each may use the ones below it, never above):
- handlers.py: kopf wiring only: indexes, and event handlers that add keys to the work
  queue and return.
- workers.py: the work queue (kube_xdp_api.workqueue) and the threads that drain it;
  what each key means; the periodic resync; retries with backoff.
- reconciler.py: one program's reconcile (placement -> writes -> status -> Events), and
  the clean-ups of orphaned attachments and of XdpNodes whose Node is gone.
- kubeapi.py: the operator's writes to the API server: the one place its side effects live.
- placement.py: pure; program + nodes -> wanted XdpAttachments, and the plan
  (create/update/delete) against the stored ones.
- status.py: pure; XdpAttachments -> the XdpProgram status and its Events.
- kube_xdp_api: names, spec validation, reasons, conditions (shared with the agent).

The operator never touches a kernel, and never writes an XdpAttachment's status (the
node's agent owns it).
"""

"""kube-xdp's operator: places XdpPrograms on nodes and reports how they are doing.

Layers (each may use the ones below it, never above):
- handlers.py: kopf wiring only; the one place that talks to the API server.
- placement.py: pure; program + nodes -> wanted XdpAttachments, and the plan
  (create/update/delete) against the stored ones.
- status.py: pure; XdpAttachments -> the XdpProgram status and its Events.
- kube_xdp_api: names, spec validation, reasons, conditions (shared with the agent).

The operator never touches a kernel, and never writes an XdpAttachment's status (the
node's agent owns it).
"""

"""kube-xdp's resource model, shared by the operator and the agent.

This layer is pure: no Kubernetes client, no kernel access. It holds names, the CRD
schemas (the one source of truth for crds/ and the chart), spec validation and the
catalogue of condition reasons.
"""

"""The LLMDeployment operator: the resource's schema (the single source of truth for the CRD), the children it
becomes, the status it reports, and the kopf handlers that keep them so."""

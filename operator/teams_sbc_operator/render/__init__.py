"""Pure renderers: from custom resources to what the operator writes. No I/O here.

- :mod:`.conditions`: status conditions and Ready;
- :mod:`.tenants`: which tenants a trunk serves, under which FQDN;
- :mod:`.status`: the status of TeamsTrunks and TeamsTenants;
- :mod:`.certificate`: cert-manager's Certificate and the dev CA's Secrets;
- :mod:`.sbc_config`: the SBC's config file (teams_sbc.config's format);
- :mod:`.workload`: the ConfigMap, Deployment, Service and PodDisruptionBudget of the SBC pods.
"""

from teams_sbc_operator.model import GROUP, VERSION
from teams_sbc_operator.render.conditions import condition, merge_conditions
from teams_sbc_operator.render.status import tenant_status
from teams_sbc_operator.render.tenants import tenant_fqdn

__all__ = ["GROUP", "VERSION", "condition", "merge_conditions", "tenant_fqdn", "tenant_status"]

"""IAC-LTH (Benedykciuk et al.): implantable adaptive cells in a trained U-Net's skip connections, searched
with PC-DARTS and stopped early by Jensen-Shannon stability.

Importing the package registers the ``iac-lth`` strategy and its search network's kind.
"""

from segnas.strategies.iac_lth.search import CellSearchHook
from segnas.strategies.iac_lth.stability import StabilityRule, StabilityTracker, js_divergence
from segnas.strategies.iac_lth.strategy import PROFILES, IacLthStrategy, IacProfile, IacSearchNetSpec

__all__ = ["CellSearchHook", "StabilityRule", "StabilityTracker", "js_divergence", "PROFILES", "IacLthStrategy",
           "IacProfile", "IacSearchNetSpec"]

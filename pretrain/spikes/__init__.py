"""Loss spikes: detect online, tell benign from malignant, roll back automatically, keep the evidence.

:mod:`.detector` (pure) finds and classifies spikes, :mod:`.policies` turns them into training actions, and
:mod:`.analysis` reads finished curves (``k2hf spikes analyze``).
"""

from .analysis import (
    analysis_settings,
    analyze,
    detect_with_rollbacks,
    format_table,
    load_curve,
    recorded_spike_settings,
    spike_title,
)
from .detector import Spike, SpikeDetector, detect
from .policies import SpikeAction, SpikeMonitor

__all__ = ["Spike", "SpikeAction", "SpikeDetector", "SpikeMonitor", "analysis_settings", "analyze", "detect",
           "detect_with_rollbacks", "format_table", "load_curve", "recorded_spike_settings",
           "spike_title"]

"""Where a constraint keeps its state: entries of ``param_groups``, each under the constraint's own prefix.

``param_groups`` is what every optimizer and every wrapper (``ZeroRedundancyOptimizer``, ``Lookahead``, DCP,
Lightning) saves and restores as it is, so a constraint keeps everything there: its counters, its phase, its
options, its switch rule's memory and its target norms. The innermost constraint on a base optimizer uses the
prefix ``lawn_``; a constraint wrapping it ``lawn2_``, the next ``lawn3_``, and so on: in ``LAWN(WRS(base, ...),
tail)`` the two never share a key, so neither can see or change the other's state.
"""

from __future__ import annotations

#: the options, as ``<prefix><name>`` in every param group
OPTIONS = ("free_steps", "granularity", "project_gradient", "fixed_target", "target_scale", "retract_every")
#: the automatic switch's constants and memory (:mod:`lawn.constraint.auto_switch`)
AUTO = ("auto_check_every", "auto_threshold", "auto_max_free_steps", "auto_last_log_norm", "auto_peak_growth")


class Keys:
    """The names of one constraint's entries in ``param_groups``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.steps, self.frozen, self.switch_step = prefix + "steps", prefix + "frozen", prefix + "switch_step"
        self.targets = prefix + "target_norms"  # a list aligned with group["params"]
        self.free_steps, self.granularity = prefix + "free_steps", prefix + "granularity"
        self.project_gradient, self.fixed_target = prefix + "project_gradient", prefix + "fixed_target"
        self.target_scale, self.retract_every = prefix + "target_scale", prefix + "retract_every"
        self.auto_check_every, self.auto_threshold = prefix + "auto_check_every", prefix + "auto_threshold"
        self.auto_max_free_steps = prefix + "auto_max_free_steps"
        self.auto_last_log_norm, self.auto_peak_growth = prefix + "auto_last_log_norm", prefix + "auto_peak_growth"
        self.options = tuple(prefix + name for name in OPTIONS)
        self.auto = tuple(prefix + name for name in AUTO)
        #: every scalar entry (the same value in every group)
        self.scalars = (self.steps, self.frozen, self.switch_step, *self.options, *self.auto)
        self.all = (*self.scalars, self.targets)

    @classmethod
    def at_depth(cls, depth: int) -> Keys:
        """The keys of the constraint ``depth`` levels above the base optimizer (0: the innermost)."""
        return cls("lawn_" if depth == 0 else f"lawn{depth + 1}_")


#: the innermost constraint's keys (a checkpoint's ``param_groups`` hold ``lawn_target_norms`` etc.)
INNERMOST = Keys.at_depth(0)

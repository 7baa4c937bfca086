"""The built-in transfer strategies, one module each: its spec (the ``strategy:`` section) and how it attaches to
the two-tower recipe (``lmrec.strategies.components``). Their mechanics (adapters, schedules, samplers, losses) live
in the modules beside this package; these modules import them only when a run attaches, so a job spec validates
without torch. ``lmrec.strategies.spec`` lists them by name.
"""

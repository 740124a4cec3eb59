"""Drive monitoring: per-drive state machine, threshold/size policy, resume rules.

Independent of the hypervisor (events arrive through :mod:`.protocols`) and of how volumes
are extended (work leaves through the :class:`~.protocols.Extender` interface).
"""

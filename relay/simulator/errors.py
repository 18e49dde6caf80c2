"""The simulator's exceptions: a request it cannot carry out, and how the control API answers each (400, 404, 409).
Nothing else belongs here."""


class SimulatorError(Exception):
    """A request to the simulator that it cannot carry out; the control API answers 400."""


class NotFound(SimulatorError, LookupError):
    """No such integration, resource or record; the control API answers 404."""


class InvalidMutation(SimulatorError):
    """The mutation does not apply to the record as it is (restoring a live record, ...); the control API: 409."""

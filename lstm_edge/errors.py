"""Domain errors. Every error a user can cause is one of these; the CLI prints the
message as one line and exits with `exit_code`, never a traceback."""


class LstmEdgeError(Exception):
    """Base class: a problem with the user's input, reported as one line."""

    exit_code = 2


class UnsupportedModelError(LstmEdgeError):
    """The model uses an operator, attribute or structure we do not compile."""


class ModelFormatError(LstmEdgeError):
    """The model file is missing, unreadable or internally inconsistent."""


class InputDataError(LstmEdgeError):
    """Calibration or test data has the wrong shape, dtype or contains NaN/Inf."""


class QuantizationError(LstmEdgeError):
    """The model cannot be represented in the integer arithmetic (e.g. overflow)."""


class ToolchainError(LstmEdgeError):
    """A C compiler or tool needed by `verify` or a benchmark is missing or failed."""


class VerificationMismatch(LstmEdgeError):
    """The generated C and the simulator disagree (exit code 1: a failed check, not bad input)."""

    exit_code = 1

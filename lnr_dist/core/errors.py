"""The two ways a job ends badly, each printed by the CLI as one line without a traceback.

UserError: bad input (a config key, a file, a line); exit 2. RunFailed: the input was fine but the run was not
(a worker crashed, a node died) after its restarts; exit 1, the message names the log with the tracebacks.
"""


class UserError(ValueError):
    """Bad input: a config key, a file, a line. The message names where the problem is and what to do."""


class RunFailed(RuntimeError):
    """A distributed run failed for a reason other than bad input, after ray.max_failures restarts. The message
    names the log file holding the workers' tracebacks."""

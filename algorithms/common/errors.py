"""Error types the tuner relies on to tell a bad config from a diverged run from a bug."""


class ConfigError(ValueError):
    """A hyperparameter has an invalid value; raised when the config is built, before any work starts."""


class UnsupportedSpaceError(ValueError):
    """The environment's observation or action space is not one the algorithm can handle."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite during training; the run cannot continue meaningfully.

    Attributes:
        loss_name: which loss went non-finite (e.g. ``"policy_loss"``).
        step: environment steps taken when it was detected.
    """

    def __init__(self, loss_name: str, step: int) -> None:
        super().__init__(f"non-finite {loss_name} at env step {step}")
        self.loss_name = loss_name
        self.step = step

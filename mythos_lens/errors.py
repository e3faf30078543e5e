"""The one exception type mythos-lens raises for bad input."""


class MythosLensError(ValueError):
    """Bad input to mythos-lens: the message says what was wrong and what was expected."""

    def __init__(self, what: str, expected: str) -> None:
        self.what = what
        self.expected = expected
        super().__init__(f"{what}; expected {expected}")

"""Repository tooling (not installed): ``check_package`` is ``make package``."""

from tests.browser.conftest import browser  # noqa: F401  (the headless Chromium fixture)

"""Testing with a real appliance: the launcher every test uses, and a pytest plugin
(:mod:`secureconnect.testing.plugin`, registered as ``secureconnect`` through the ``pytest11``
entry point) whose fixtures start one for your own tests (docs/testing.md)."""

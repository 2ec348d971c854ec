"""A module no test allows: importing it leaves a marker
(tests/test_factory_security.py proves a refused reference never imports it)."""

from hostile_helpers import touch

touch("never_imported.import")


def flow(**kwargs):
    touch("never_imported.flow")

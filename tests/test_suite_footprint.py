"""The suite's own footprint on disk: it must not fill a CI machine's /tmp.

Runs write real checkpoints (hundreds of MB for the larger presets), so the folders of
passing tests are removed as each test ends (pytest's ``tmp_path_retention_policy``).
"""


def test_passing_tests_leave_no_run_folders_behind(pytestconfig):
    # "all" (pytest's default) kept every test's folder for three sessions: ~50 GB.
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"
    assert int(pytestconfig.getini("tmp_path_retention_count")) <= 1

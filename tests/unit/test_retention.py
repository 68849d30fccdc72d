from tasks.registry.retention import kept_versions


def test_keeps_champion_previous_and_the_newest() -> None:
    assert kept_versions([1, 2, 3, 4, 5, 6, 7], champion=7, previous=6, keep_last=3) == {5, 6, 7}
    # An old champion (after rollbacks) is kept whatever its age.
    assert kept_versions([1, 3, 4, 5, 6, 7], champion=1, previous=3, keep_last=3) == {1, 3, 5, 6, 7}
    assert kept_versions([2, 9], champion=9, previous=None, keep_last=0) == {9}
    assert kept_versions([], champion=None, previous=None, keep_last=3) == set()

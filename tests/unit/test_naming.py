import pytest

from kubetune.builders.naming import RAYJOB_NAME_LIMIT, is_dns1035_label, rayjob_name

pytestmark = pytest.mark.unit


def test_short_dns1035_names_are_kept_readable():
    assert rayjob_name("llama2-13b-gsm8k") == "llama2-13b-gsm8k"


@pytest.mark.parametrize(
    "name",
    [
        "a" * 48,
        "x" * 253,
        "llama2.13b.gsm8k",  # dots: valid FineTuneJob name, invalid RayJob name
        "13b-first",  # starts with a digit
        "a" * 46 + "-",  # cut would leave a trailing dash
        "a-" * 60 + "b",
    ],
)
def test_derived_names_fit_kuberay(name):
    derived = rayjob_name(name)
    assert len(derived) <= RAYJOB_NAME_LIMIT
    assert is_dns1035_label(derived)
    assert rayjob_name(name) == derived  # deterministic


def test_long_names_sharing_a_prefix_do_not_collide():
    prefix = "finetune-llama-2-13b-on-gsm8k-with-a-long-descriptive-name-"
    names = [prefix + suffix for suffix in ("a", "b", "run-2", "run-3")] + ["x" * 47, "x" * 48]
    derived = [rayjob_name(n) for n in names]
    assert len(set(derived)) == len(names)


def test_a_hashed_name_cannot_equal_another_jobs_plain_name():
    long_name = "a" * 60
    derived = rayjob_name(long_name)
    # The plain name equal to `derived` would map to itself; the hash suffix makes a clash
    # require a SHA-256 prefix collision with a name the user chose to look like a hash.
    assert derived != long_name and derived.startswith("a" * 38)

"""The shipped alert rules load in Prometheus and pass their unit tests (promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # promtool (make unit runs none)

RULES_DIR = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"

promtool = shutil.which("promtool")


@pytest.fixture(autouse=True)
def _have_promtool() -> None:
    # Not a skip: `make test` installs the prometheus package, so a missing promtool is an error.
    assert promtool is not None, "promtool missing: apt-get install prometheus (make setup does)"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run([promtool, *args], cwd=RULES_DIR, capture_output=True, text=True,
                          timeout=120, check=False)


def test_rules_are_valid() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    rules = (RULES_DIR / "alerts.yml").read_text().count("- alert:")
    assert rules >= 10 and f"SUCCESS: {rules} rules found" in result.stdout


def test_rules_pass_their_unit_tests() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("good", "bad", "alert"), [
    ("autoextend_lease_renewal_age_seconds > 60", "autoextend_lease_renewal_age_seconds > 600",
     "AutoextendLeaseRenewalLate"),
    ("max by (vg) (autoextend_vg_mda_level) >= 2", "max by (vg) (autoextend_vg_mda_level) >= 3",
     "AutoextendVGMetadataAreaFull"),
    ("increase(autoextend_vg_foreign_writes_total[15m]) > 0",
     "increase(autoextend_vg_foreign_writes_total[15m]) > 1", "AutoextendForeignWrite"),
    ("increase(autoextend_stale_view_pauses_total[1h]) > 0",
     "increase(autoextend_stale_view_pauses_total[1h]) > 1", "AutoextendStaleView"),
    ("group_left histogram_quantile(0.99,", "group_left histogram_quantile(0.5,",
     "AutoextendHeadroomShort"),
    ("(increase(autoextend_backing_store_full_total[1h])) > 0",
     "(increase(autoextend_backing_store_full_total[1h])) > 1", "AutoextendBackingStoreFull"),
])
def test_unit_tests_catch_a_broken_rule(tmp_path: Path, good: str, bad: str,
                                        alert: str) -> None:
    """A rule with the wrong threshold fails the tests: the tests can fail."""
    rules = (RULES_DIR / "alerts.yml").read_text()
    broken = rules.replace(good, bad)
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(RULES_DIR / "alerts_test.yml", tmp_path)
    assert promtool is not None
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr

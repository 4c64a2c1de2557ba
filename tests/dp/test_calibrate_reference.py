"""The level-independent part of calibration (the plan and OpenDP's loss at noise scale 1) is kept
per (schema, spec but its ε or ρ): a query asked again at another level builds one measurement, not
two, and gets exactly what a calibration from scratch gives."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.dp import calibrate, sql_to_spec

QUERIES = [
    "SELECT COUNT(*) FROM pums",
    "SELECT AVG(income) FROM pums",
    "SELECT educ, COUNT(*) FROM pums GROUP BY educ",
    "SELECT race, COUNT(*) FROM pums GROUP BY race",  # no public keys: OpenDP's threshold
]


def _privacy(schema, level: float) -> dict:
    if schema.policy.measure == "zcdp":
        return {"rho": level, "delta": 1e-6}
    return {"epsilon": level, "delta": 1e-6} if schema.policy.measure == "approx" else {"epsilon": level}


def _fields(cal) -> tuple:
    p = cal.preview
    return (p.cost, p.global_scale, p.threshold, p.aggregates, cal.accuracy)


@pytest.mark.parametrize("schema_name", ["pums", "pums_approx", "pums_zcdp"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.floats(min_value=0.01, max_value=5.0), second=st.floats(min_value=0.01, max_value=5.0))
def test_a_kept_reference_gives_what_a_calibration_from_scratch_gives(request, schema_name, first, second):
    schema = request.getfixturevalue(schema_name)
    for sql in QUERIES:
        if "race" in sql and schema.policy.measure == "pure":
            continue  # keys without public values need a δ
        calibrate.clear_cache()
        calibrate._calibrated(
            schema, sql_to_spec(sql, schema, _privacy(schema, first))
        )  # keeps the reference
        spec = sql_to_spec(sql, schema, _privacy(schema, second))
        kept = calibrate._calibrated(schema, spec)
        scratch = calibrate._calibrate(schema, spec, use_cache=False)
        assert _fields(kept) == _fields(scratch)
        assert kept.preview.cost == scratch.preview.cost


def test_the_reference_is_shared_across_levels_only(pums, pums_approx):
    calibrate.clear_cache()
    spec = sql_to_spec("SELECT COUNT(*), AVG(income) FROM pums", pums, {"epsilon": 0.7})
    again = sql_to_spec("SELECT COUNT(*), AVG(income) FROM pums", pums, {"epsilon": 0.9})
    other = sql_to_spec("SELECT COUNT(*), AVG(age) FROM pums", pums, {"epsilon": 0.7})
    reference = calibrate._reference(pums, spec)
    assert calibrate._reference(pums, again) is reference
    assert calibrate._reference(pums, other) is not reference
    # Another policy (another fingerprint) or another δ: another reference.
    approx = sql_to_spec(
        "SELECT COUNT(*), AVG(income) FROM pums", pums_approx, {"epsilon": 0.7, "delta": 1e-6}
    )
    approx_delta = sql_to_spec(
        "SELECT COUNT(*), AVG(income) FROM pums", pums_approx, {"epsilon": 0.7, "delta": 1e-7}
    )
    assert calibrate._reference(pums_approx, approx) is not reference
    assert calibrate._reference(pums_approx, approx) is not calibrate._reference(pums_approx, approx_delta)
    calibrate.clear_cache()
    assert calibrate._reference(pums, spec) is not reference


def test_the_kept_reference_holds_no_data(pums):
    """The plan is over an empty frame of the schema's columns (and public keys, for a group-by)."""
    calibrate.clear_cache()
    spec = sql_to_spec("SELECT educ, COUNT(*) FROM pums GROUP BY educ", pums, {"epsilon": 0.5})
    reference = calibrate._reference(pums, spec)
    plan = reference.plan
    assert set(vars(reference)) == {"plan", "loss"}
    frame = plan.lazyframe.collect()
    keys = plan.keys
    assert keys is not None and frame.height == keys.height  # one row per public key, no data
    assert frame.drop(list(keys.columns)).null_count().row(0) == (frame.height,) * (frame.width - keys.width)

from django.core.management import call_command

from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.queries.models import BudgetAllocation


def test_demo_builds_a_consortium_ready_to_query(db, media_root, capsys):
    call_command("demo")
    out = capsys.readouterr().out
    assert "census-bureau/pums: 1000 rows" in out and "labour-survey/adult: 30162 rows" in out
    assert "Bearer chp_" in out
    assert DatasetVersion.objects.filter(status="ready").count() == 3
    assert "labour-survey/sms: 5574 messages to label" in out
    assert BudgetAllocation.objects.filter(organisation__slug="research-lab").count() == 2


def test_demo_credentials_work_after_make_run_created_an_operator(db, media_root, capsys, client):
    """`make run` first (an operator with a random password), then `make demo`: every user the demo
    names logs in with the password it prints."""
    import re

    from clearinghouse.accounts.services import operator_create

    operator_create(username="operator", email="operator@localhost")  # as runlocal does, random password
    call_command("demo")
    out = capsys.readouterr().out
    match = re.search(r"Users \(password '([^']+)'\): ([^.]+)\.", out)
    assert match, out
    password, users = match.group(1), [u.strip() for u in match.group(2).split(",")]
    assert "demo-operator" in users and "operator" not in users
    for username in users:  # through the portal's log-in form, as a person would
        response = client.post("/login/", {"username": username, "password": password})
        assert response.status_code == 302, (username, response.status_code)
        assert client.session.get("_auth_user_id"), username
        client.post("/logout/")

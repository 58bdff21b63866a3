"""What a reply to a create proves (client.classify_create): only the contract's refusals prove nothing was
created; everything else after the request left is an unknown submission (the table on docs/providers/linkmodel.md)."""

from __future__ import annotations

import pytest

from batcher.polling import PollPolicy, RunningClock, next_poll_in
from batcher.providers.linkmodel_api import Outcome, classify_create

CASES = [
    # (HTTP status, envelope code or None for a body that is not an envelope, outcome)
    (429, None, Outcome.RATE_LIMITED),
    (200, 429, Outcome.RATE_LIMITED),
    (429, 429, Outcome.RATE_LIMITED),
    (400, 400, Outcome.PERMANENT),
    (200, 400, Outcome.PERMANENT),
    (401, 401, Outcome.AUTH),
    (403, None, Outcome.AUTH),
    (200, 403, Outcome.AUTH),
    (502, None, Outcome.AMBIGUOUS),  # a gateway's HTML page after forwarding the create
    (504, None, Outcome.AMBIGUOUS),
    (500, 500, Outcome.AMBIGUOUS),
    (503, 503, Outcome.AMBIGUOUS),
    (200, 500, Outcome.AMBIGUOUS),  # an exhausted balance has been seen as HTTP 200 with code 500
    (408, None, Outcome.AMBIGUOUS),
    (425, None, Outcome.AMBIGUOUS),
    (404, 404, Outcome.AMBIGUOUS),
    (200, 7, Outcome.AMBIGUOUS),  # a code the contract does not list
    (200, None, Outcome.AMBIGUOUS),  # HTTP 200 whose body is not the API's envelope
]


@pytest.mark.parametrize(("status", "code", "outcome"), CASES)
def test_a_create_reply_proves_not_created_only_where_the_contract_says(
    status: int, code: int | None, outcome: Outcome
) -> None:
    assert classify_create(status, code) is outcome


def test_the_give_up_clock_counts_only_time_between_two_still_running_answers() -> None:
    clock = RunningClock()
    clock.answered(0.0, running=True)
    clock.answered(10.0, running=True)
    assert clock.seconds == 10.0
    clock.answered(20.0, running=False)  # a 503: the gap to it does not count, nor the one after it
    clock.answered(4000.0, running=True)
    assert clock.seconds == 10.0
    clock.answered(4005.0, running=True)
    assert clock.seconds == 15.0


def test_a_task_created_long_ago_is_polled_at_once_and_not_given_up() -> None:
    policy = PollPolicy(give_up_s=900.0)
    # twenty minutes after its create, first poll of this run: no time of polling yet
    assert next_poll_in(1200.0, 0, 2.0, policy, running_s=0.0) == 0.0
    assert next_poll_in(1200.0, 3, 2.0, policy, running_s=100.0) == policy.max_interval_s
    assert next_poll_in(1200.0, 3, 2.0, policy, running_s=900.0) is None
    assert next_poll_in(1200.0, 3, 2.0, policy) is None  # the old clock: age alone gives up

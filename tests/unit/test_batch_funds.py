"""The funds check a batch makes before it signs (``services.preflight``): pure arithmetic."""

from __future__ import annotations

import pytest

from services.preflight import affordable, fees, max_cost

GWEI = 10**9


@pytest.mark.parametrize(
    ("costs", "balance", "expected"),
    [
        ([], 0, []),
        ([10, 10, 10], 30, [True, True, True]),
        ([10, 10, 10], 29, [True, True, False]),
        ([10, 50, 10], 30, [True, False, True]),  # the one that does not fit is skipped, not paid: later ones may fit
        ([31], 30, [False]),
        ([0, 0], 0, [True, True]),
    ],
)
def test_costs_are_paid_in_queue_order_and_one_that_does_not_fit_is_skipped(costs, balance, expected) -> None:
    assert affordable(costs, balance) == expected


def test_the_cost_is_the_most_a_transaction_can_take() -> None:
    assert max_cost({"value": 5, "gas": 21_000, "maxFeePerGas": 3 * GWEI, "maxPriorityFeePerGas": GWEI}) == 5 + 21_000 * 3 * GWEI
    assert max_cost({"gas": 50_000, "gasPrice": 2 * GWEI}) == 50_000 * 2 * GWEI


def test_fees_are_twice_the_base_fee_plus_the_tip_or_the_gas_price_without_one() -> None:
    block = {"result": {"baseFeePerGas": hex(GWEI)}}
    assert fees(block, {"result": hex(2 * GWEI)}, {"result": hex(7)}) == {"maxFeePerGas": 4 * GWEI, "maxPriorityFeePerGas": 2 * GWEI}
    assert fees(block, {"error": {"code": -32601}}, {}) == {"maxFeePerGas": 3 * GWEI, "maxPriorityFeePerGas": GWEI}
    assert fees({"result": {}}, {"result": hex(GWEI)}, {"result": hex(5 * GWEI)}) == {"gasPrice": 5 * GWEI}

"""The simulator's JSON payloads: engine values -> Orderly's JSON shapes (docs/exchange.md
§4, §6), and the envelope around them.

Orderly sends JSON numbers everywhere except ID and enum strings, so every ``Decimal`` goes out
as a JSON number. The engine books money at 6 decimals and prices at the tick, so every value
has at most 15 significant digits below 1e9 and survives the float round trip exactly (a client
that parses numbers as ``Decimal`` reads back the booked figure). ``seq`` is a Python ``int``
and is written exactly, though it exceeds 2**53.

``est_liq_price`` is 0 when there is no liquidation price (the docs allow 0 or null).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from guardbot.sim.fills import TAKER_FEE
from guardbot.sim.margin import RATE_STEP, ZERO, Market
from guardbot.sim.params import CROSS
from guardbot.sim.records import Account, Liquidation, Order
from guardbot.sim.reports import AccountFigures, HoldingRow, PositionRow

RATE_FIELDS = ("imr", "mmr", "imr_with_orders", "mmr_with_orders")


def num(value: Decimal) -> float:
    """A Decimal as a JSON number."""
    return float(value)


def rate(value: Decimal) -> float:
    return float(value.quantize(RATE_STEP))


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options makes one a call


def dumps(payload: Any) -> str:
    return _ENCODER.encode(payload)


def ok(data: Any, now_ms: int) -> dict[str, Any]:
    """The success envelope; ``data`` None means "no data" (position_margin, margin_mode)."""
    if data is None:
        return {"success": True, "timestamp": now_ms}
    return {"success": True, "data": data, "timestamp": now_ms}


def error(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message}


def position(row: PositionRow, now_ms: int) -> dict[str, Any]:
    """The ``Position`` object of ``GET /v1/positions`` and ``/v1/position/{symbol}``."""
    return {
        "IMR_withdraw_orders": rate(row.imr_with_orders),
        "MMR_with_orders": rate(row.mmr_with_orders),
        "average_open_price": num(row.average_open_price),
        "cost_position": num(row.cost_position),
        "est_liq_price": num(row.est_liq_price or ZERO),
        "fee_24_h": num(row.fee_24h),
        "imr": rate(row.imr),
        "last_sum_unitary_funding": 0.0,
        "mark_price": num(row.mark_price),
        "mmr": rate(row.mmr),
        "pending_long_qty": num(row.pending_long_qty),
        "pending_short_qty": num(row.pending_short_qty),
        "pnl_24_h": num(row.pnl_24h),
        "position_qty": num(row.qty),
        "settle_price": num(row.average_open_price),
        "symbol": row.symbol,
        "seq": row.seq,
        "timestamp": now_ms,
        "updated_time": row.updated_ms,
        "unsettled_pnl": num(row.unsettled_pnl),
        "leverage": row.leverage,
        "margin_mode": row.margin_mode,
        "margin": num(row.margin),
        "accrued_funding_fee": 0.0,
    }


def position_push(row: PositionRow, now_ms: int) -> dict[str, Any]:
    """One entry of the private ``position`` push: camelCase (§6)."""
    return {
        "symbol": row.symbol,
        "positionQty": num(row.qty),
        "costPosition": num(row.cost_position),
        "lastSumUnitaryFunding": 0.0,
        "sumUnitaryFundingVersion": 0,
        "pendingLongQty": num(row.pending_long_qty),
        "pendingShortQty": num(row.pending_short_qty),
        "settlePrice": num(row.average_open_price),
        "averageOpenPrice": num(row.average_open_price),
        "unsettledPnl": num(row.unsettled_pnl),
        "pnl24H": num(row.pnl_24h),
        "fee24H": num(row.fee_24h),
        "markPrice": num(row.mark_price),
        "estLiqPrice": num(row.est_liq_price or ZERO),
        "version": row.seq,
        "imrwithOrders": rate(row.imr_with_orders),
        "mmrwithOrders": rate(row.mmr_with_orders),
        "mmr": rate(row.mmr),
        "imr": rate(row.imr),
        "seq": row.seq,
        "timestamp": now_ms,
        "updated_time": row.updated_ms,
        "leverage": row.leverage,
        "marginMode": row.margin_mode,
        "margin": num(row.margin),
    }


def account_figures(figures: AccountFigures, pnl_key: str = "total_pnl_24_h") -> dict[str, Any]:
    """The ratio block of ``/v1/positions`` (``total_pnl_24_h``) and ``/v1/account_info``
    (spelled ``total_pnl_24h`` there, §4)."""
    return {
        "current_margin_ratio_with_orders": rate(figures.margin_ratio),
        "free_collateral": num(figures.free_collateral),
        "initial_margin_ratio": rate(figures.initial_margin_ratio),
        "initial_margin_ratio_with_orders": rate(figures.initial_margin_ratio),
        "maintenance_margin_ratio": rate(figures.maintenance_margin_ratio),
        "maintenance_margin_ratio_with_orders": rate(figures.maintenance_margin_ratio),
        "margin_ratio": rate(figures.margin_ratio),
        "open_margin_ratio": rate(figures.margin_ratio),
        "total_collateral_value": num(figures.total_collateral_value),
        pnl_key: num(figures.total_pnl_24h),
        "account_value": num(figures.account_value),
    }


def holding(row: HoldingRow) -> dict[str, Any]:
    return {
        "token": "USDC",
        "holding": num(row.holding),
        "frozen": num(row.frozen),
        "pending_short": num(row.pending_short),
        "isolated_margin": num(row.isolated_margin),
        "isolated_order_frozen": num(row.isolated_order_frozen),
        "updated_time": row.updated_ms,
    }


def balance_push(row: HoldingRow, version: int) -> dict[str, Any]:
    """``data`` of the private ``balance`` push (§6)."""
    usdc = {
        "holding": num(row.holding),
        "frozen": num(row.frozen),
        "interest": 0.0,
        "pendingShortQty": 0.0,
        "pendingExposure": 0.0,
        "pendingLongQty": 0.0,
        "pendingLongExposure": 0.0,
        "isolatedMargin": num(row.isolated_margin),
        "isolatedOrderFrozen": num(row.isolated_order_frozen),
        "version": version,
        "staked": 0.0,
        "unbonding": 0.0,
        "vault": 0.0,
        "averageOpenPrice": 0.0,
        "pnl24H": 0.0,
        "fee24H": 0.0,
        "markPrice": 1.0,
    }
    return {"balances": {"USDC": usdc}}


def fee_rate_bps(rate_value: Decimal) -> float:
    return num(rate_value * 10000)


def account_detail(account: Account, figures: AccountFigures) -> dict[str, Any]:
    """``data`` of the private ``account`` push (§6)."""
    fee = fee_rate_bps(TAKER_FEE)
    return {
        "accountDetail": {
            "marginMode": "SPOT_FUTURES",
            "futuresLeverage": account.leverage("PERP_ETH_USDC", CROSS),
            "takerFeeRate": fee,
            "makerFeeRate": fee / 2,
            "maintenanceCancelFlag": False,
            "totalCollateralValue": num(figures.total_collateral_value),
            "freeCollateral": num(figures.free_collateral),
            "accountValue": num(figures.account_value),
            "symbolLeverage": [
                {"symbol": s, "marginMode": mode, "leverage": lev}
                for (s, mode), lev in sorted(account.leverages.items())
            ],
        }
    }


def market_info(market: Market, created_ms: int) -> dict[str, Any]:
    """One row of ``GET /v1/public/info`` (§4)."""
    return {
        "symbol": market.symbol,
        "quote_min": 0.0,
        "quote_max": num(market.start_price * 100),
        "quote_tick": num(market.quote_tick),
        "base_min": num(market.base_min),
        "base_max": num(market.base_max),
        "base_tick": num(market.base_tick),
        "min_notional": num(market.min_notional),
        "price_range": 0.03,
        "price_scope": 0.4,
        "std_liquidation_fee": num(market.std_liquidation_fee),
        "liquidator_fee": num(market.liquidator_fee),
        "claim_insurance_fund_discount": 0.0,
        "funding_period": 8,
        "cap_funding": 0.0075,
        "floor_funding": -0.0075,
        "cap_ir": 0.0001,
        "floor_ir": -0.0001,
        "interest_rate": 0.0001,
        "imr_factor": num(market.imr_factor),
        "base_imr": num(market.base_imr),
        "base_mmr": num(market.base_mmr),
        "created_time": created_ms,
        "updated_time": created_ms,
        "liquidation_tier": "1",
        "global_max_oi_cap": 100000000.0,
    }


def futures(market: Market, mark: Decimal, open_interest: Decimal, now_ms: int) -> dict[str, Any]:
    """One row of ``GET /v1/public/futures``; the simulator has no funding or volume."""
    price = num(mark)
    return {
        "symbol": market.symbol,
        "index_price": price,
        "mark_price": price,
        "sum_unitary_funding": 0.0,
        "est_funding_rate": 0.0,
        "last_funding_rate": 0.0,
        "next_funding_time": now_ms - now_ms % 28_800_000 + 28_800_000,
        "open_interest": num(open_interest),
        "24h_open": price,
        "24h_close": price,
        "24h_high": price,
        "24h_low": price,
        "24h_amount": 0.0,
        "24h_volume": 0.0,
    }


def client_info(account_id: str, markets: Iterable[Market], leverage: int) -> dict[str, Any]:
    """``GET /v1/client/info``; fee rates in basis points, ``max_notional`` at the account's
    leverage from ``(1/(leverage*imr_factor))^(1/0.8)`` (§4)."""
    fee = fee_rate_bps(TAKER_FEE)
    markets = list(markets)
    return {
        "account_id": account_id,
        "email": "",
        "account_mode": "FUTURES",
        "max_leverage": leverage,
        "taker_fee_rate": fee,
        "maker_fee_rate": fee / 2,
        "futures_taker_fee_rate": fee,
        "futures_maker_fee_rate": fee / 2,
        "rwa_taker_fee_rate": fee,
        "rwa_maker_fee_rate": fee / 2,
        "maintenance_cancel_orders": False,
        "imr_factor": {m.symbol: num(m.imr_factor) for m in markets},
        "max_notional": {
            m.symbol: num(
                (
                    (1 / (Decimal(leverage) * m.imr_factor)) ** (Decimal(1) / Decimal("0.8"))
                ).quantize(Decimal(1))
            )
            for m in markets
        },
    }


def order(item: Order) -> dict[str, Any]:
    """One row of ``GET /v1/orders``."""
    return {
        "order_id": item.order_id,
        "client_order_id": item.client_order_id,
        "symbol": item.symbol,
        "side": item.side,
        "type": item.order_type,
        "price": None if item.price is None else num(item.price),
        "quantity": num(item.quantity),
        "executed": num(item.executed),
        "average_executed_price": num(item.average_executed_price),
        "status": item.status,
        "margin_mode": item.margin_mode,
        "reduce_only": item.reduce_only,
        "created_time": item.created_ms,
        "updated_time": item.updated_ms,
    }


def order_created(item: Order) -> dict[str, Any]:
    """``data`` of ``POST /v1/order``."""
    return {
        "order_id": item.order_id,
        "client_order_id": item.client_order_id,
        "order_type": item.order_type,
        "order_price": None if item.price is None else num(item.price),
        "order_quantity": num(item.quantity),
        "order_amount": None,
        "error_message": "none",
    }


def liquidations(events: Iterable[Liquidation]) -> list[dict[str, Any]]:
    """``GET /v1/liquidations`` rows: one object per liquidation id, its positions in
    ``positions_by_perp``. The simulator charges no liquidation fee (liquidation.py)."""
    grouped: dict[int, list[Liquidation]] = {}
    for event in events:
        grouped.setdefault(event.liquidation_id, []).append(event)
    return [{
        "liquidation_id": liquidation_id,
        "timestamp": group[0].time_ms,
        "type": "liquidated",
        "transfer_amount_to_insurance_fund": num(sum((e.to_insurance_fund for e in group),
                                                     ZERO)),
        "positions_by_perp": [{
            "symbol": e.symbol,
            "position_qty": num(e.qty),
            "transfer_price": num(e.price),
            "cost_position_transfer": num(e.qty * e.price),
            "liquidator_fee": 0.0,
            "insurance_fund_fee": 0.0,
            "abs_liquidator_fee": 0.0,
            "abs_insurance_fund_fee": 0.0,
        } for e in group],
    } for liquidation_id, group in grouped.items()]


_PUSHED_NAMES = {
    "liquidation_id": "liquidationId",
    "transfer_amount_to_insurance_fund": "transferAmountToInsuranceFund",
    "positions_by_perp": "positionsByPerp",
    "position_qty": "positionQty",
    "transfer_price": "transferPrice",
    "cost_position_transfer": "costPositionTransfer",
    "liquidator_fee": "liquidatorFee",
    "insurance_fund_fee": "insuranceFundFee",
    "abs_liquidator_fee": "absLiquidatorFee",
    "abs_insurance_fund_fee": "absInsuranceFundFee",
}


def liquidations_push(events: Iterable[Liquidation]) -> list[dict[str, Any]]:
    """A ``liquidationsaccount`` push's ``data``: the REST rows in camelCase."""

    def camel(value: Any) -> Any:
        if isinstance(value, dict):
            return {_PUSHED_NAMES.get(k, k): camel(v) for k, v in value.items()}
        if isinstance(value, list):
            return [camel(v) for v in value]
        return value

    return [camel(row) for row in liquidations(events)]

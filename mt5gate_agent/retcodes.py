"""MT5 trade server return codes (``TRADE_RETCODE_*``) and terminal errors as contract codes.

The names follow the official MQL5 list, snake_cased without the ``TRADE_RETCODE_`` prefix,
so a client sees ``invalid_volume`` with ``retcode`` 10014 where MT5 said 10014.
"""

TRADE_RETCODE_REQUOTE = 10004
TRADE_RETCODE_PLACED = 10008
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_DONE_PARTIAL = 10010
TRADE_RETCODE_INVALID_VOLUME = 10014
TRADE_RETCODE_INVALID_PRICE = 10015
TRADE_RETCODE_INVALID_STOPS = 10016
TRADE_RETCODE_NO_MONEY = 10019
TRADE_RETCODE_PRICE_CHANGED = 10020
TRADE_RETCODE_PRICE_OFF = 10021
TRADE_RETCODE_INVALID_EXPIRATION = 10022
TRADE_RETCODE_NO_CHANGES = 10025
TRADE_RETCODE_FROZEN = 10029
TRADE_RETCODE_INVALID_FILL = 10030
TRADE_RETCODE_INVALID_ORDER = 10035
TRADE_RETCODE_POSITION_CLOSED = 10036
TRADE_RETCODE_INVALID_CLOSE_VOLUME = 10038

SUCCESS_RETCODES = frozenset({TRADE_RETCODE_PLACED, TRADE_RETCODE_DONE, TRADE_RETCODE_DONE_PARTIAL})

TRADE_RETCODE_CODES: dict[int, str] = {
    10004: "requote",
    10006: "rejected",
    10007: "cancelled",
    10008: "placed",
    10009: "done",
    10010: "done_partial",
    10011: "error",
    10012: "timeout",
    10013: "invalid_request",
    10014: "invalid_volume",
    10015: "invalid_price",
    10016: "invalid_stops",
    10017: "trade_disabled",
    10018: "market_closed",
    10019: "no_money",
    10020: "price_changed",
    10021: "price_off",
    10022: "invalid_expiration",
    10023: "order_changed",
    10024: "too_many_requests",
    10025: "no_changes",
    10026: "server_disables_autotrading",
    10027: "client_disables_autotrading",
    10028: "locked",
    10029: "frozen",
    10030: "invalid_fill",
    10031: "connection",
    10032: "only_real",
    10033: "limit_orders",
    10034: "limit_volume",
    10035: "invalid_order",
    10036: "position_closed",
    10038: "invalid_close_volume",
    10039: "close_order_exist",
    10040: "limit_positions",
    10041: "reject_cancel",
    10042: "long_only",
    10043: "short_only",
    10044: "close_only",
    10045: "fifo_close",
    10046: "hedge_prohibited",
}

# What ``MetaTrader5.last_error()`` returns when a function answered None or False.
LAST_ERROR_CODES: dict[int, str] = {
    1: "ok",
    -1: "terminal_error",
    -2: "invalid_params",
    -3: "no_memory",
    -4: "not_found",
    -5: "invalid_version",
    -6: "auth_failed",
    -7: "unsupported",
    -8: "autotrading_disabled",
    -10000: "internal_fail",
    -10001: "ipc_send_failed",
    -10002: "ipc_receive_failed",
    -10003: "ipc_init_failed",
    -10004: "terminal_not_connected",
    -10005: "ipc_timeout",
}

# last_error() codes that mean the link to the terminal is gone: the backend re-initializes.
TERMINAL_LINK_ERRORS = frozenset({-10001, -10002, -10003, -10004, -10005})


def trade_retcode_code(retcode: int) -> str:
    """The contract code of a trade server return code (``trade_retcode_12345`` if unknown)."""
    return TRADE_RETCODE_CODES.get(retcode, f"trade_retcode_{retcode}")


def last_error_code(code: int) -> str:
    """The contract code of a ``last_error()`` code (``terminal_error_N`` if unknown)."""
    return LAST_ERROR_CODES.get(code, f"terminal_error_{code}")

"""The mt5gate agent: runs beside one MetaTrader 5 terminal and executes the API's jobs.

Importable without the server's dependencies: it needs only the standard library and
``httpx`` (plus ``MetaTrader5`` for the ``mt5`` backend, imported when that backend logs in).
"""

__version__ = "0.1.0"

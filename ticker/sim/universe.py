"""The simulator's instrument universe: about 100,000 Kite-style instruments, deterministic.

`generate_universe(seed, trading_date)` gives the same rows for the same seed and date, like a
Kite instruments dump of that morning: NSE and BSE equities, indices (segment INDICES), NFO
index weeklies (NIFTY, BANKNIFTY, FINNIFTY) and stock monthlies, BFO (SENSEX, BANKEX), MCX,
CDS and BCD futures and options. Derivative contracts (and so their tokens) depend on the
date, as on Kite, where tokens and symbols change between days. `last_price` carries the
previous close the market simulation starts from (Kite's dump often has 0 there).

Tradingsymbols follow Kite: `RELIANCE`, `NIFTY24DECFUT`, monthly `NIFTY24DEC24000CE`, weekly
`NIFTY2412524000CE` (YY, month 1-9/O/N/D, DD), `USDINR24DEC83.5CE`, `CRUDEOIL24DEC6000CE`.
"""

from __future__ import annotations

import calendar
import csv
import io
import math
import random
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from ticker.feed import protocol

CSV_HEADER = (
    "instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry",
    "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange",
)
IST = ZoneInfo("Asia/Kolkata")
SEGMENT_NUMBERS = {
    "NSE": protocol.NSE, "NFO": protocol.NFO, "CDS": protocol.CDS, "BSE": protocol.BSE,
    "BFO": protocol.BFO, "BCD": protocol.BCD, "MCX": protocol.MCX, "NCO": protocol.NCO,
}
_MONTH_CODES = "123456789OND"  # weekly symbols' month letter
TUESDAY, THURSDAY = 1, 3  # NSE and BSE weekly expiry days


class Instrument(NamedTuple):
    """One row of the instruments dump, with Kite's 12 columns."""

    instrument_token: int
    exchange_token: int
    tradingsymbol: str
    name: str
    last_price: float
    expiry: date | None
    strike: float
    tick_size: float
    lot_size: int
    instrument_type: str  # EQ, FUT, CE, PE
    segment: str  # NSE, BSE, INDICES, NFO-FUT, NFO-OPT, CDS-OPT, ...
    exchange: str

    @property
    def is_derivative(self) -> bool:
        """Futures and options (they carry open interest)."""
        return self.instrument_type != "EQ"


class Underlying(NamedTuple):
    """What a family of derivatives is written on."""

    symbol: str
    spot: float
    lot_size: int
    strike_step: float
    strikes_each_side: int
    volatility: float  # annual, for a rough option premium


def ist_today() -> date:
    """Today's date in India, the default trading date."""
    return datetime.now(IST).date()


def generate_universe(seed: int, trading_date: date | None = None) -> list[Instrument]:
    """All instruments for `trading_date` (default: today in IST), the same for the same seed."""
    builder = _UniverseBuilder(seed, trading_date or ist_today())
    return builder.build()


def to_csv(rows: Iterable[Instrument]) -> str:
    """The rows as Kite's instruments CSV (header included, expiry empty for non-derivatives)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow((
            row.instrument_token, row.exchange_token, row.tradingsymbol, row.name,
            _number(row.last_price), row.expiry.isoformat() if row.expiry else "",
            _number(row.strike), _number(row.tick_size), row.lot_size, row.instrument_type,
            row.segment, row.exchange,
        ))
    return out.getvalue()


def _number(value: float) -> str:
    """Kite prints whole numbers without a decimal point and others in shortest form."""
    return str(int(value)) if value == int(value) else repr(round(value, 6))


# ---------------------------------------------------------------------------------------------
# Reference data: real names so the simulator looks familiar; the rest is generated.

# symbol, company name, F&O lot size, approximate price
_KNOWN_STOCKS = (
    ("RELIANCE", "RELIANCE INDUSTRIES", 500, 1450), ("TCS", "TATA CONSULTANCY SERV LT", 175, 3100),
    ("HDFCBANK", "HDFC BANK", 550, 1000), ("INFY", "INFOSYS", 400, 1500),
    ("ICICIBANK", "ICICI BANK", 700, 1400), ("SBIN", "STATE BANK OF INDIA", 750, 950),
    ("ITC", "ITC", 1600, 410), ("BHARTIARTL", "BHARTI AIRTEL", 475, 2100),
    ("KOTAKBANK", "KOTAK MAHINDRA BANK", 400, 2100), ("LT", "LARSEN & TOUBRO", 175, 4000),
    ("AXISBANK", "AXIS BANK", 625, 1250), ("HINDUNILVR", "HINDUSTAN UNILEVER", 300, 2450),
    ("BAJFINANCE", "BAJAJ FINANCE", 750, 1000), ("MARUTI", "MARUTI SUZUKI INDIA", 50, 16000),
    ("ASIANPAINT", "ASIAN PAINTS", 250, 2900), ("SUNPHARMA", "SUN PHARMACEUTICAL IND L", 350, 1800),
    ("TITAN", "TITAN COMPANY", 175, 3800), ("WIPRO", "WIPRO", 3000, 250),
    ("HCLTECH", "HCL TECHNOLOGIES", 350, 1600), ("ULTRACEMCO", "ULTRATECH CEMENT", 50, 11800),
    ("NTPC", "NTPC", 1500, 330), ("POWERGRID", "POWER GRID CORP. LTD.", 1900, 270),
    ("ONGC", "OIL AND NATURAL GAS CORP.", 2250, 240), ("TATASTEEL", "TATA STEEL", 5500, 170),
    ("JSWSTEEL", "JSW STEEL", 675, 1150), ("M&M", "MAHINDRA & MAHINDRA", 200, 3600),
    ("ADANIENT", "ADANI ENTERPRISES", 300, 2400), ("ADANIPORTS", "ADANI PORTS AND S.E.Z", 475, 1450),
    ("COALINDIA", "COAL INDIA", 1350, 380), ("BAJAJFINSV", "BAJAJ FINSERV", 250, 2000),
    ("NESTLEIND", "NESTLE INDIA", 500, 1250), ("TECHM", "TECH MAHINDRA", 600, 1450),
    ("GRASIM", "GRASIM INDUSTRIES", 250, 2800), ("HINDALCO", "HINDALCO INDUSTRIES", 1400, 800),
    ("DRREDDY", "DR. REDDY'S LABORATORIES", 625, 1250), ("CIPLA", "CIPLA", 375, 1500),
    ("EICHERMOT", "EICHER MOTORS", 175, 7000), ("HEROMOTOCO", "HERO MOTOCORP", 150, 5600),
    ("BRITANNIA", "BRITANNIA INDUSTRIES", 125, 5900), ("APOLLOHOSP", "APOLLO HOSPITALS ENTER. L", 125, 7500),
    ("DIVISLAB", "DIVI'S LABORATORIES", 100, 6500), ("INDUSINDBK", "INDUSIND BANK", 700, 800),
    ("SBILIFE", "SBI LIFE INSURANCE CO", 375, 2000), ("HDFCLIFE", "HDFC LIFE INS CO", 1100, 760),
    ("TATACONSUM", "TATA CONSUMER PRODUCT", 550, 1150), ("BPCL", "BHARAT PETROLEUM CORP LT", 1975, 360),
    ("SHRIRAMFIN", "SHRIRAM FINANCE", 825, 850), ("TRENT", "TRENT", 100, 4200),
    ("BEL", "BHARAT ELECTRONICS", 1425, 410), ("ETERNAL", "ETERNAL", 2425, 300),
    ("VEDL", "VEDANTA", 1150, 500), ("DLF", "DLF", 825, 750), ("GAIL", "GAIL (INDIA)", 3150, 180),
    ("IOC", "INDIAN OIL CORP", 4875, 165), ("PNB", "PUNJAB NATIONAL BANK", 8000, 120),
    ("BANKBARODA", "BANK OF BARODA", 2925, 280), ("CANBK", "CANARA BANK", 6750, 140),
    ("TATAPOWER", "TATA POWER CO", 1450, 390), ("IRCTC", "INDIAN RAIL TOUR CORP", 875, 700),
    ("HAL", "HINDUSTAN AERONAUTICS", 150, 4600), ("PIDILITIND", "PIDILITE INDUSTRIES", 500, 1500),
    ("SIEMENS", "SIEMENS", 125, 3100), ("GODREJCP", "GODREJ CONSUMER PRODUCTS", 500, 1200),
    ("DABUR", "DABUR INDIA", 1250, 500), ("HAVELLS", "HAVELLS INDIA", 500, 1500),
    ("AMBUJACEM", "AMBUJA CEMENTS", 1050, 560), ("ACC", "ACC", 300, 1850),
    ("LUPIN", "LUPIN", 425, 2000), ("AUROPHARMA", "AUROBINDO PHARMA", 550, 1200),
    ("BIOCON", "BIOCON", 2500, 370), ("MUTHOOTFIN", "MUTHOOT FINANCE", 275, 3200),
    ("CHOLAFIN", "CHOLAMANDALAM IN & FIN CO", 625, 1650), ("LICHSGFIN", "LIC HOUSING FINANCE", 1000, 570),
    ("TVSMOTOR", "TVS MOTOR COMPANY", 175, 3500), ("BAJAJ-AUTO", "BAJAJ AUTO", 75, 9000),
    ("ASHOKLEY", "ASHOK LEYLAND", 5000, 150), ("BHEL", "BHEL", 2625, 260),
    ("SAIL", "STEEL AUTHORITY OF INDIA", 4700, 130), ("NMDC", "NMDC", 6750, 75),
    ("RECLTD", "REC", 1275, 380), ("PFC", "POWER FIN CORP", 1300, 400),
    ("IDEA", "VODAFONE IDEA", 71475, 10), ("YESBANK", "YES BANK", 31100, 22),
    ("INDIGO", "INTERGLOBE AVIATION", 150, 5800), ("JIOFIN", "JIO FIN SERVICES", 2350, 300),
    ("ADANIGREEN", "ADANI GREEN ENERGY", 600, 1000), ("LODHA", "LODHA DEVELOPERS", 450, 1200),
    ("POLYCAB", "POLYCAB INDIA", 125, 7300), ("DIXON", "DIXON TECHNOLOGIES (INDIA)", 50, 15000),
    ("PERSISTENT", "PERSISTENT SYSTEMS", 100, 6000), ("COFORGE", "COFORGE", 375, 1800),
    ("LTIM", "LTIMINDTREE", 150, 5800), ("MPHASIS", "MPHASIS", 275, 2800),
)
# Kite's real exchange tokens (NSE) and BSE scrip codes for a few names people remember.
_KNOWN_NSE_TOKENS = {"RELIANCE": 2885, "INFY": 1594, "TCS": 11536, "HDFCBANK": 1333,
                     "ICICIBANK": 4963, "SBIN": 3045, "ITC": 1660}
_KNOWN_BSE_CODES = {"RELIANCE": 500325, "INFY": 500209, "TCS": 532540, "HDFCBANK": 500180,
                    "ICICIBANK": 532174, "SBIN": 500112, "ITC": 500875}

# tradingsymbol (= name), approximate level, exchange token (NIFTY 50 is 256265 = 1001 << 8 | 9)
_NSE_INDICES = (
    ("NIFTY 50", 26000, 1001), ("NIFTY BANK", 59000, 1016), ("NIFTY FIN SERVICE", 27500, 1007),
    ("INDIA VIX", 12, 1035), ("NIFTY IT", 37000, 1002), ("NIFTY NEXT 50", 70000, 1003),
    ("NIFTY 100", 27000, 1004), ("NIFTY MIDCAP 100", 60000, 1005), ("NIFTY AUTO", 27000, 1008),
    ("NIFTY PHARMA", 22500, 1009), ("NIFTY FMCG", 56000, 1010), ("NIFTY METAL", 10500, 1011),
    ("NIFTY REALTY", 950, 1012), ("NIFTY ENERGY", 36000, 1013), ("NIFTY MEDIA", 1600, 1014),
    ("NIFTY PSU BANK", 8200, 1015), ("NIFTY PVT BANK", 28500, 1017), ("NIFTY 200", 14500, 1018),
    ("NIFTY 500", 24000, 1019), ("NIFTY MIDCAP 50", 17000, 1020), ("NIFTY MID SELECT", 13800, 1021),
    ("NIFTY SMLCAP 100", 18500, 1022), ("NIFTY INFRA", 9500, 1023), ("NIFTY COMMODITIES", 9300, 1024),
    ("NIFTY CONSUMPTION", 12500, 1025), ("NIFTY CPSE", 6700, 1026), ("NIFTY MNC", 30500, 1027),
    ("NIFTY PSE", 10000, 1028), ("NIFTY SERV SECTOR", 33000, 1029), ("NIFTY GROWSECT 15", 13000, 1030),
    ("NIFTY50 VALUE 20", 13500, 1031), ("NIFTY DIV OPPS 50", 6900, 1032), ("NIFTY100 QUALTY30", 5800, 1033),
    ("NIFTY50 EQL WGT", 33000, 1034), ("NIFTY HEALTHCARE", 14800, 1036), ("NIFTY OIL AND GAS", 12000, 1037),
    ("NIFTY MICROCAP250", 24000, 1038), ("NIFTY TOTAL MKT", 14000, 1039), ("NIFTY CONSR DURBL", 39000, 1040),
    ("NIFTY MIDSML 400", 20500, 1041),
)
_BSE_INDICES = (
    ("SENSEX", 85000, 1), ("BANKEX", 65000, 12), ("BSE100", 27000, 2), ("BSE200", 11800, 3),
    ("BSE500", 37000, 4), ("MIDCAP", 47000, 5), ("SMLCAP", 54000, 6), ("AUTO", 61000, 7),
    ("BSE IT", 36000, 8), ("BSE FMCG", 20500, 9), ("BSE HC", 44000, 10), ("METAL", 34000, 11),
    ("POWER", 6900, 13), ("REALTY", 7300, 14), ("OILGAS", 27500, 15), ("CONDURBL", 61000, 16),
    ("CPSE", 4000, 17), ("INFRA", 600, 18), ("ENERGY", 11700, 19), ("FINSERV", 12800, 20),
    ("TECK", 17800, 21), ("MFG", 1100, 22), ("SNSX50", 26500, 23), ("SNXT50", 82000, 24),
    ("BSEIPO", 15500, 25), ("CARBON", 3300, 26), ("GREENX", 8300, 27), ("DOL30", 8000, 28),
    ("LRGCAP", 10000, 29), ("ALLCAP", 11000, 30),
)
# underlying symbol, index tradingsymbol, lot size, strike step, strikes each side, weeklies?
_NSE_INDEX_FNO = (
    ("NIFTY", "NIFTY 50", 75, 50, 60, True),
    ("BANKNIFTY", "NIFTY BANK", 35, 100, 40, True),
    ("FINNIFTY", "NIFTY FIN SERVICE", 65, 50, 40, True),
    ("MIDCPNIFTY", "NIFTY MID SELECT", 140, 25, 40, False),
)
_BSE_INDEX_FNO = (("SENSEX", "SENSEX", 20, 100, 50, True), ("BANKEX", "BANKEX", 30, 100, 30, False))
# pair, spot, futures tick, options?
_CURRENCIES = (
    ("USDINR", 88.5, 0.0025, True), ("EURINR", 101.5, 0.0025, True), ("GBPINR", 116.5, 0.0025, True),
    ("JPYINR", 58.5, 0.0025, True), ("EURUSD", 1.16, 0.0001, False), ("GBPUSD", 1.32, 0.0001, False),
    ("USDJPY", 152.0, 0.0025, False),
)
# symbol, name, spot, lot size, tick size, strike step, options?, expiry day of month, months
_ALL_MONTHS = tuple(range(1, 13))
_COMMODITIES = (
    ("CRUDEOIL", "CRUDEOIL", 5600, 100, 1.0, 50, True, 19, _ALL_MONTHS),
    ("CRUDEOILM", "CRUDEOILM", 5600, 10, 1.0, 50, False, 19, _ALL_MONTHS),
    ("NATURALGAS", "NATURALGAS", 380, 1250, 0.1, 5, True, 25, _ALL_MONTHS),
    ("NATGASMINI", "NATGASMINI", 380, 250, 0.1, 5, False, 25, _ALL_MONTHS),
    ("GOLD", "GOLD", 128000, 100, 1.0, 500, True, 5, (2, 4, 6, 8, 10, 12)),
    ("GOLDM", "GOLDM", 128000, 10, 1.0, 500, True, 5, _ALL_MONTHS),
    ("SILVER", "SILVER", 158000, 30, 1.0, 1000, True, 5, (3, 5, 7, 9, 12)),
    ("SILVERM", "SILVERM", 158000, 5, 1.0, 1000, True, 28, (2, 4, 6, 8, 11)),
    ("COPPER", "COPPER", 1010, 2500, 0.05, 5, True, 28, _ALL_MONTHS),
    ("ZINC", "ZINC", 290, 5000, 0.05, 2.5, True, 28, _ALL_MONTHS),
    ("ALUMINIUM", "ALUMINIUM", 265, 5000, 0.05, 2.5, False, 28, _ALL_MONTHS),
    ("LEAD", "LEAD", 182, 5000, 0.05, 1, False, 28, _ALL_MONTHS),
    ("MENTHAOIL", "MENTHAOIL", 930, 360, 0.1, 10, False, 28, _ALL_MONTHS),
    ("COTTONCNDY", "COTTONCNDY", 54000, 48, 10.0, 500, False, 28, _ALL_MONTHS),
)

# Pieces for generated company names: "<stem> <industry>", e.g. "KAVERI TEXTILES".
_SYLLABLES = ("AR", "VA", "KA", "SHI", "RA", "MA", "NI", "DE", "PRA", "SU", "TA", "LA", "GO",
              "BHA", "VI", "JA", "NA", "RI", "SA", "KO", "HA", "DHA", "MI", "PU", "RO", "YA",
              "CHA", "TE", "LI", "VE", "SRI", "GA", "BA", "DI", "KE", "NE", "PA", "RE", "ZE", "AM")
_INDUSTRIES = (("TEXTILES", "TEX"), ("PHARMA", "PHAR"), ("STEELS", "STL"), ("CHEMICALS", "CHEM"),
               ("FINANCE", "FIN"), ("INFRA", "INFRA"), ("POWER", "POWER"), ("TECHNOLOGIES", "TECH"),
               ("MOTORS", "MOT"), ("FOODS", "FOOD"), ("CEMENT", "CEM"), ("PAPERS", "PAP"),
               ("SUGARS", "SUG"), ("AGRO", "AGRO"), ("CAPITAL", "CAP"), ("HOLDINGS", "HOLD"),
               ("INDUSTRIES", "IND"), ("ENTERPRISES", "ENT"), ("SOLAR", "SOL"), ("LOGISTICS", "LOG"),
               ("PLASTICS", "PLAS"), ("RETAIL", "RTL"), ("HOTELS", "HOTEL"), ("ENGINEERING", "ENGG"),
               ("BANK", "BANK"), ("LIFESCIENCES", "LIFE"), ("CERAMICS", "CERA"), ("CABLES", "CAB"))
_LOT_SIZES = (125, 150, 250, 300, 375, 400, 500, 550, 600, 700, 750, 900, 1000, 1100, 1200,
              1400, 1500, 1800, 2000, 2500, 3000, 3500, 4000, 5000, 6000)

NSE_EQUITIES = 8000
BSE_EQUITIES = 9000
BSE_ONLY_EQUITIES = 3500  # the rest of BSE's list is dual-listed with NSE
FNO_STOCKS = 200
STOCK_MONTHLIES = 3
STOCK_STRIKES_EACH_SIDE = 28
INDEX_WEEKLIES = 4
INDEX_MONTHLIES = 3


# ---------------------------------------------------------------------------------------------
# Expiry calendars


def weekly_expiries(trading_date: date, weekday: int, count: int) -> list[date]:
    """The next `count` dates falling on `weekday`, from `trading_date` on."""
    first = trading_date + timedelta(days=(weekday - trading_date.weekday()) % 7)
    return [first + timedelta(weeks=i) for i in range(count)]


def last_weekday_of_month(year: int, month: int, weekday: int) -> date:
    """The last `weekday` of a month (monthly index and stock derivatives expire on it)."""
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def monthly_expiries(trading_date: date, weekday: int, count: int) -> list[date]:
    """The next `count` monthly expiries (last `weekday` of each month) from `trading_date` on."""
    expiries = []
    year, month = trading_date.year, trading_date.month
    while len(expiries) < count:
        expiry = last_weekday_of_month(year, month, weekday)
        if expiry >= trading_date:
            expiries.append(expiry)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return expiries


def _business_day_on_or_before(day: date) -> date:
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def commodity_expiries(trading_date: date, day: int, months: tuple[int, ...], count: int) -> list[date]:
    """MCX expiries: a fixed day (moved back off weekends) in the contract months."""
    expiries = []
    year, month = trading_date.year, trading_date.month
    while len(expiries) < count:
        if month in months:
            last_day = calendar.monthrange(year, month)[1]
            expiry = _business_day_on_or_before(date(year, month, min(day, last_day)))
            if expiry >= trading_date:
                expiries.append(expiry)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return expiries


# ---------------------------------------------------------------------------------------------
# Symbols and prices


def monthly_code(expiry: date) -> str:
    """`24DEC` for December 2024."""
    return f"{expiry:%y}{calendar.month_abbr[expiry.month].upper()}"


def weekly_code(expiry: date) -> str:
    """`24D05` for 5 December 2024, `24125` for 25 January 2024 (Kite's weekly format)."""
    return f"{expiry:%y}{_MONTH_CODES[expiry.month - 1]}{expiry.day:02d}"


def strike_text(strike: float) -> str:
    """`24000`, `83.5`, `83.25`: as Kite writes strikes in symbols."""
    return _number(strike)


def round_to_tick(price: float, tick_size: float) -> float:
    """`price` rounded to a positive multiple of `tick_size`."""
    ticks = max(1, round(price / tick_size))
    return round(ticks * tick_size, 6)


def option_premium(spot: float, strike: float, days: int, volatility: float, is_call: bool) -> float:
    """A rough premium: intrinsic value plus a time value that fades away from the money."""
    intrinsic = max(0.0, spot - strike) if is_call else max(0.0, strike - spot)
    spread = spot * volatility * math.sqrt(max(days, 1) / 365)
    time_value = 0.4 * spread * math.exp(-0.5 * ((spot - strike) / spread) ** 2)
    return intrinsic + time_value


def stock_strike_step(price: float) -> float:
    """NSE-like strike intervals for stock options by price band."""
    for ceiling, step in ((50, 1), (100, 2.5), (250, 5), (500, 10), (1000, 20), (2500, 50),
                          (5000, 100), (10000, 250)):
        if price < ceiling:
            return step
    return 500


# ---------------------------------------------------------------------------------------------


class _TokenAllocator:
    """Unique exchange tokens per segment number (tokens are exchange_token << 8 | segment)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: dict[int, set[int]] = {}
        self._next: dict[int, int] = {}

    def reserve(self, segment: int, exchange_token: int) -> int:
        used = self._used.setdefault(segment, set())
        if exchange_token in used:
            raise ValueError(f"exchange token {exchange_token} reused in segment {segment}")
        used.add(exchange_token)
        return exchange_token

    def random(self, segment: int, low: int, high: int, rng: random.Random) -> int:
        used = self._used.setdefault(segment, set())
        while (candidate := rng.randrange(low, high)) in used:
            pass
        return self.reserve(segment, candidate)

    def sequential(self, segment: int, start: int) -> int:
        """Derivatives get increasing tokens with small gaps, as new contracts do on Kite."""
        candidate = max(self._next.get(segment, start), start)
        used = self._used.setdefault(segment, set())
        while candidate in used:
            candidate += 1
        self._next[segment] = candidate + self._rng.randint(1, 3)
        return self.reserve(segment, candidate)


class _UniverseBuilder:
    """Builds the rows; one method per family keeps each piece short."""

    def __init__(self, seed: int, trading_date: date) -> None:
        self.rng = random.Random(f"kite-sim:{seed}:{trading_date.isoformat()}")
        self.stock_rng = random.Random(f"kite-sim-stocks:{seed}")  # equities stay across days
        self.trading_date = trading_date
        self.tokens = _TokenAllocator(self.rng)
        self.rows: list[Instrument] = []
        self.index_levels: dict[str, float] = {}

    def build(self) -> list[Instrument]:
        stocks = self._stock_list()
        self._add_indices()
        self._add_equities(stocks)
        self._add_index_derivatives()
        self._add_stock_derivatives(stocks[:FNO_STOCKS])
        self._add_currency_derivatives()
        self._add_commodity_derivatives()
        return self.rows

    def _add(self, exchange: str, segment: str, exchange_token: int, symbol: str, name: str,
             price: float, tick: float, lot: int, kind: str = "EQ", expiry: date | None = None,
             strike: float = 0.0) -> None:
        number = protocol.INDICES if segment == "INDICES" else SEGMENT_NUMBERS[exchange]
        self.rows.append(Instrument(
            exchange_token << 8 | number, exchange_token, symbol, name, price, expiry, strike,
            tick, lot, kind, segment, exchange,
        ))

    # -- equities and indices --

    def _stock_list(self) -> list[tuple[str, str, int, float]]:
        """(symbol, name, lot size, price): the known names first, then generated ones."""
        rng = self.stock_rng
        stocks = [(s, n, lot, float(p)) for s, n, lot, p in _KNOWN_STOCKS]
        seen = {s for s, *_ in stocks}
        while len(stocks) < NSE_EQUITIES:
            stem = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
            industry, short = rng.choice(_INDUSTRIES)
            symbol = (stem + short)[:10]
            if symbol not in seen:
                seen.add(symbol)
                price = round(math.exp(rng.uniform(math.log(8), math.log(9000))), 1)
                stocks.append((symbol, f"{stem} {industry}", rng.choice(_LOT_SIZES), price))
        return stocks

    def _add_indices(self) -> None:
        for exchange, indices in (("NSE", _NSE_INDICES), ("BSE", _BSE_INDICES)):
            for name, level, exchange_token in indices:
                self.tokens.reserve(protocol.INDICES, exchange_token)
                price = round_to_tick(level * self.rng.uniform(0.97, 1.03), 0.05)
                self.index_levels[name] = price
                # Kite lists indices with tick size and lot size 0.
                self._add(exchange, "INDICES", exchange_token, name, name, price, 0.0, 0)

    def _add_equities(self, stocks: list[tuple[str, str, int, float]]) -> None:
        rng = self.stock_rng
        for symbol, name, _lot, price in stocks:
            token = _KNOWN_NSE_TOKENS.get(symbol)
            exchange_token = (self.tokens.reserve(protocol.NSE, token) if token
                              else self.tokens.random(protocol.NSE, 100, 60000, rng))
            self._add("NSE", "NSE", exchange_token, symbol, name, price, 0.05, 1)
        dual_listed = stocks[: BSE_EQUITIES - BSE_ONLY_EQUITIES]
        for symbol, name, _lot, price in dual_listed:
            code = _KNOWN_BSE_CODES.get(symbol)
            exchange_token = (self.tokens.reserve(protocol.BSE, code) if code
                              else self.tokens.random(protocol.BSE, 500000, 545000, rng))
            self._add("BSE", "BSE", exchange_token, symbol, name, price, 0.05, 1)
        for index in range(BSE_ONLY_EQUITIES):
            exchange_token = self.tokens.random(protocol.BSE, 500000, 545000, rng)
            price = round(math.exp(rng.uniform(math.log(2), math.log(2000))), 1)
            self._add("BSE", "BSE", exchange_token, f"BSESCRIP{index + 1:04d}",
                      f"BSE LISTED COMPANY {index + 1}", price, 0.01, 1)

    # -- equity derivatives --

    def _add_index_derivatives(self) -> None:
        for exchange, families, weekday in (("NFO", _NSE_INDEX_FNO, TUESDAY),
                                            ("BFO", _BSE_INDEX_FNO, THURSDAY)):
            for symbol, index_name, lot, step, each_side, has_weeklies in families:
                spot = self.index_levels[index_name]
                underlying = Underlying(symbol, spot, lot, step, each_side, 0.14)
                monthlies = monthly_expiries(self.trading_date, weekday, INDEX_MONTHLIES)
                weeklies = weekly_expiries(self.trading_date, weekday, INDEX_WEEKLIES) if has_weeklies else []
                self._add_futures(exchange, underlying, monthlies, 0.05)
                self._add_options(exchange, underlying, sorted(set(monthlies + weeklies)),
                                  set(monthlies), 0.05)

    def _add_stock_derivatives(self, stocks: list[tuple[str, str, int, float]]) -> None:
        monthlies = monthly_expiries(self.trading_date, TUESDAY, STOCK_MONTHLIES)
        for symbol, _name, lot, price in stocks:
            underlying = Underlying(symbol, price, lot, stock_strike_step(price),
                                    STOCK_STRIKES_EACH_SIDE, 0.3)
            self._add_futures("NFO", underlying, monthlies, 0.05)
            self._add_options("NFO", underlying, monthlies, set(monthlies), 0.05)

    def _add_futures(self, exchange: str, underlying: Underlying, expiries: list[date],
                     tick: float) -> None:
        number = SEGMENT_NUMBERS[exchange]
        for expiry in expiries:
            days = (expiry - self.trading_date).days
            price = round_to_tick(underlying.spot * (1 + 0.065 * days / 365), tick)
            exchange_token = self.tokens.sequential(number, 35000)
            self._add(exchange, f"{exchange}-FUT", exchange_token,
                      f"{underlying.symbol}{monthly_code(expiry)}FUT", underlying.symbol, price,
                      tick, underlying.lot_size, "FUT", expiry)

    def _add_options(self, exchange: str, underlying: Underlying, expiries: list[date],
                     monthlies: set[date], tick: float) -> None:
        number = SEGMENT_NUMBERS[exchange]
        for expiry in expiries:
            code = monthly_code(expiry) if expiry in monthlies else weekly_code(expiry)
            days = (expiry - self.trading_date).days
            for strike in self._strikes(underlying):
                for kind in ("CE", "PE"):
                    premium = option_premium(underlying.spot, strike, days, underlying.volatility,
                                             kind == "CE")
                    exchange_token = self.tokens.sequential(number, 35000)
                    self._add(exchange, f"{exchange}-OPT", exchange_token,
                              f"{underlying.symbol}{code}{strike_text(strike)}{kind}",
                              underlying.symbol, round_to_tick(premium, tick), tick,
                              underlying.lot_size, kind, expiry, strike)

    @staticmethod
    def _strikes(underlying: Underlying) -> Iterator[float]:
        step = underlying.strike_step
        atm = round(underlying.spot / step) * step
        for offset in range(-underlying.strikes_each_side, underlying.strikes_each_side + 1):
            strike = float(round(atm + offset * step, 4))
            if strike > 0:
                yield strike

    # -- currency and commodity derivatives --

    def _add_currency_derivatives(self) -> None:
        weeklies = weekly_expiries(self.trading_date, THURSDAY, 4)
        futures_months = monthly_expiries(self.trading_date, THURSDAY, 6)
        for exchange, each_side in (("CDS", 40), ("BCD", 20)):
            for pair, spot, tick, has_options in _CURRENCIES:
                spot = round_to_tick(spot * self.rng.uniform(0.99, 1.01), tick)
                underlying = Underlying(pair, spot, 1, 0.25, each_side, 0.06)
                self._add_futures(exchange, underlying, futures_months, tick)
                if has_options:
                    expiries = sorted(set(futures_months[:3] + weeklies))
                    self._add_options(exchange, underlying, expiries, set(futures_months), 0.0025)

    def _add_commodity_derivatives(self) -> None:
        for symbol, _name, spot, lot, tick, step, has_options, day, months in _COMMODITIES:
            spot = round_to_tick(spot * self.rng.uniform(0.97, 1.03), tick)
            expiries = commodity_expiries(self.trading_date, day, months, 4)
            underlying = Underlying(symbol, spot, lot, step, 30, 0.3)
            self._add_futures("MCX", underlying, expiries, tick)
            if has_options:
                every_expiry = set(expiries)  # MCX options use the monthly symbol format
                self._add_options("MCX", underlying, expiries[:2], every_expiry,
                                  max(0.05, tick / 2))

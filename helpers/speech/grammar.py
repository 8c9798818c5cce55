"""The sentence grammar of the synthetic corpus: Traditional characters, times, dates, numbers, places, everyday
actions, and Mandarin-English code-switching at work; every sentence is drawn from a ``random.Random``, so a seed
gives the same texts everywhere.
"""
from __future__ import annotations

import random

# ---------------------------------------------------------------------------------------------
# The grammar. Slot fillers are lists of (text, syllables); English words count as 2 syllables.
# ---------------------------------------------------------------------------------------------
DIGITS = "零一二三四五六七八九"
PEOPLE = ["我", "你", "他", "她", "我們", "老師", "媽媽", "爸爸", "阿嬤", "同事", "經理", "小陳", "小林", "王先生",
          "李小姐"]
PLACES = ["台北車站", "基隆", "台中", "台南", "新竹", "花蓮", "淡水", "板橋", "士林夜市", "台大醫院",
          "市政府", "公司", "學校", "圖書館", "便利商店", "機場", "捷運站", "公園", "餐廳", "銀行"]
ACTIONS = ["買票", "吃飯", "看電影", "上課", "開會", "等公車", "買咖啡", "看醫生", "散步", "領錢",
           "搭捷運", "寄包裹", "喝茶", "買早餐", "打球", "逛街"]
ITEMS = ["便當", "雨傘", "咖啡", "車票", "手機", "電腦", "書包", "蛋糕", "外套", "水果"]
WEATHER = ["很熱", "很冷", "會下雨", "天氣很好", "有颱風", "比較涼", "很悶熱"]
DAY_PARTS = ["早上", "中午", "下午", "晚上"]
WEEKDAYS = ["一", "二", "三", "四", "五", "六", "天"]
OFFICE_WORDS = ["meeting", "email", "deadline", "project", "demo", "report", "schedule", "budget"]
OFFICE_VERBS = ["update", "check", "review", "confirm", "cancel"]

GENERIC_TEMPLATES = [
    "{person}{time}要去{place}{action}",
    "{date}{place}{weather}",
    "請在{time}以前到{place}",
    "這個{item}一共{price}元",
    "{person}每天{day_part}都會{action}",
    "從{place}到{place}大概要{minutes}分鐘",
    "我的電話是{phone}",
    "{date}是{person}的生日",
    "{person}{day_part}在{place}{action}",
    "{place}的{item}賣{price}元",
]
OFFICE_TEMPLATES = [
    "{time}的{office}改到{place}",
    "記得在{time}以前寄email給{person}",
    "這個project的deadline是{date}",
    "{person}說{date}要demo",
    "{person}{day_part}要跟經理開meeting",
    "{office}的時間我{time}再{verb}",
    "請幫我{verb}一下這個{office}",
    "{date}的{office}要{verb}",
]
REGISTERS = {"generic": GENERIC_TEMPLATES, "office": OFFICE_TEMPLATES, "mixed": GENERIC_TEMPLATES + OFFICE_TEMPLATES}


def chinese_number(n: int, *, liang: bool = False) -> str:
    """Read an integer 0..99999 in Mandarin characters: 305 -> 三百零五, 12 -> 十二, 2 -> 二 (兩 if liang)."""
    if not 0 <= n <= 99_999:
        raise ValueError(f"chinese_number handles 0..99999, got {n}")
    if n == 0:
        return "零"
    units = [(10_000, "萬"), (1000, "千"), (100, "百"), (10, "十"), (1, "")]
    out, zero_pending, started = [], False, False
    for value, unit in units:
        digit = (n // value) % 10
        if digit == 0:
            zero_pending = started
            continue
        if zero_pending:
            out.append("零")
            zero_pending = False
        if not (digit == 1 and value == 10 and not started):  # 十二, not 一十二
            use_liang = liang and digit == 2 and (value >= 100 or n == 2)  # 兩百, 兩千; but 二十, 十二
            out.append("兩" if use_liang else DIGITS[digit])
        out.append(unit)
        started = True
    return "".join(out)


def _time(rng: random.Random) -> str:
    hour = rng.randint(1, 12)
    minute = rng.choice([0, 0, 15, 30, 30, 45, 10, 20])
    hour_text = "兩" if hour == 2 else chinese_number(hour)
    tail = {0: "點", 30: "點半"}.get(minute, f"點{chinese_number(minute)}分")
    return rng.choice(DAY_PARTS) + hour_text + tail


def _date(rng: random.Random) -> str:
    if rng.random() < 0.4:
        day = ["今天", "明天", "後天", "下禮拜"][rng.randrange(4)]
        return day + ("" if rng.random() < 0.5 else "星期" + rng.choice(WEEKDAYS))
    return f"{chinese_number(rng.randint(1, 12))}月{chinese_number(rng.randint(1, 30))}號"


SLOTS = {
    "person": lambda r: r.choice(PEOPLE),
    "place": lambda r: r.choice(PLACES),
    "action": lambda r: r.choice(ACTIONS),
    "item": lambda r: r.choice(ITEMS),
    "weather": lambda r: r.choice(WEATHER),
    "day_part": lambda r: r.choice(DAY_PARTS),
    "time": _time,
    "date": _date,
    "price": lambda r: chinese_number(r.choice([r.randint(20, 99), r.randint(1, 19) * 50, r.randint(100, 2000)]),
                                      liang=True),
    "minutes": lambda r: chinese_number(r.choice([5, 10, 15, 20, 25, 30, 40, 45, 50])),
    "phone": lambda r: "零九" + "".join(r.choice(DIGITS) for _ in range(8)),
    "office": lambda r: r.choice(OFFICE_WORDS),
    "verb": lambda r: r.choice(OFFICE_VERBS),
}


def syllables(text: str) -> int:
    """Rough spoken length: one per CJK character, two per English word."""
    latin = sum(1 for w in "".join(c if c.isascii() and c.isalpha() else " " for c in text).split())
    return sum(1 for c in text if not c.isascii()) + 2 * latin


def make_sentence(rng: random.Random, register: str = "mixed", max_syllables: int = 14) -> str:
    """Draw one sentence of the grammar; redraws until it has at most ``max_syllables`` syllables."""
    if register not in REGISTERS:
        raise ValueError(f"register must be one of {sorted(REGISTERS)}, got {register!r}")
    for _ in range(1000):
        template = rng.choice(REGISTERS[register])
        text = template.format_map(_SlotFiller(rng))
        if syllables(text) <= max_syllables:
            return text
    raise ValueError(f"the grammar makes no sentence of at most {max_syllables} syllables; allow more (10 or above)")


class _SlotFiller(dict):
    def __init__(self, rng):
        super().__init__()
        self.rng = rng

    def __missing__(self, key):  # each {slot} occurrence draws afresh ("從{place}到{place}")
        return SLOTS[key](self.rng)


def grammar_characters() -> set[str]:
    """Every CJK character the grammar can produce (to check they are all readable by espeak)."""
    pieces = PEOPLE + PLACES + ACTIONS + ITEMS + WEATHER + DAY_PARTS + WEEKDAYS
    pieces += [DIGITS, "十百千萬兩點半分月號星期今明後天下禮拜"]
    pieces += GENERIC_TEMPLATES + OFFICE_TEMPLATES
    return {c for p in pieces for c in p if "\u4e00" <= c <= "\u9fff"}

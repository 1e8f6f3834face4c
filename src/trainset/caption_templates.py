"""Natural-language captions from booru tags, by templates (for Flux / T5 text encoders).

No language model: the tags are sorted into slots and each slot has a template, in this order:

- subject: the people-count tags (``1girl`` -> "a girl", ``2girls`` -> "two girls",
  ``no_humans`` -> "no people");
- character and series: character tags without their series qualifier, title-cased, and the
  copyright tags ("Hatsune Miku from Vocaloid");
- features: hair and eyes (``long_hair``, ``aqua_hair``, ``twintails``, ``blue_eyes``);
- clothing: tags whose last word is a garment or accessory (``black_dress`` -> "a black dress");
- action and expression (``smile`` -> "smiling", ``holding_sword`` -> "holding a sword",
  ``looking_at_viewer`` -> "looking at the viewer");
- background (``white_background`` -> "on a white background", ``outdoors``);
- style: style tags and artists ("Pixel art. Art by ...");
- the remaining general tags, listed last ("Also: ..."), so no tag is lost.
"""

from __future__ import annotations

import re

from .tags import TagDictionary

_NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_PEOPLE = re.compile(r"^(\d+)(\+?)(girl|boy|other)s?$")
_NOUN = {"girl": ("girl", "girls"), "boy": ("boy", "boys"), "other": ("person", "people")}
_MULTIPLE = {"multiple_girls": "several girls", "multiple_boys": "several boys", "multiple_others": "several people"}

_HAIR = re.compile(r"^(?:[a-z_]+_hair|twintails|ponytail|side_ponytail|twin_braids|braid|single_braid|hair_bun|double_bun|bangs|"
                   r"blunt_bangs|ahoge|sidelocks|hair_between_eyes|bob_cut|drill_hair|hime_cut)$")
_EYES = re.compile(r"^(?:[a-z_]+_eyes|heterochromia|eyelashes)$")
_EYES_NOT_FEATURES = frozenset({"closed_eyes", "half-closed_eyes", "rolling_eyes", "covering_eyes", "looking_at_another_eyes"})

_CLOTHING = frozenset((
    "dress", "shirt", "skirt", "uniform", "hat", "cap", "jacket", "coat", "gloves", "thighhighs", "pantyhose",
    "boots", "shoes", "sneakers", "ribbon", "bow", "bowtie", "necktie", "tie", "swimsuit", "bikini", "kimono",
    "yukata", "hoodie", "sweater", "scarf", "glasses", "sunglasses", "headphones", "hairband", "ornament",
    "apron", "armor", "cape", "cloak", "shorts", "pants", "jeans", "socks", "kneehighs", "leotard", "vest",
    "bodysuit", "blouse", "collar", "choker", "earrings", "necklace", "bracelet", "belt", "sleeves", "hood",
    "mask", "crown", "tiara", "veil", "headdress", "headband", "helmet", "sandals", "heels", "stockings",
    "serafuku", "maid", "suit", "robe", "overalls", "cardigan", "camisole", "corset", "bra", "panties",
    "underwear", "wings", "tail", "ears",
))
_PLURAL_GARMENTS = frozenset(("gloves", "thighhighs", "pantyhose", "boots", "shoes", "sneakers", "shorts", "pants", "jeans",
                              "socks", "kneehighs", "glasses", "sunglasses", "headphones", "earrings", "sleeves",
                              "sandals", "heels", "stockings", "overalls", "panties", "wings", "ears"))

_ACTIONS = {
    "smile": "smiling", "grin": "grinning", "laughing": "laughing", "blush": "blushing", "crying": "crying",
    "open_mouth": "with an open mouth", "closed_mouth": "with a closed mouth", "closed_eyes": "with closed eyes",
    "one_eye_closed": "winking", "wink": "winking", "looking_at_viewer": "looking at the viewer",
    "looking_back": "looking back", "looking_away": "looking away", "looking_up": "looking up",
    "looking_down": "looking down", "sitting": "sitting", "standing": "standing", "lying": "lying down",
    "kneeling": "kneeling", "walking": "walking", "running": "running", "jumping": "jumping",
    "sleeping": "sleeping", "eating": "eating", "drinking": "drinking", "reading": "reading",
    "singing": "singing", "dancing": "dancing", "waving": "waving", "pointing": "pointing",
    "arms_up": "with arms raised", "hand_up": "with a hand raised", "v": "making a peace sign",
    "upper_body": "shown from the waist up", "full_body": "shown full-length", "portrait": "in a portrait",
    "cowboy_shot": "shown from the thighs up", "from_side": "seen from the side", "from_behind": "seen from behind",
    "from_above": "seen from above", "from_below": "seen from below", "close-up": "in close-up",
}
_HOLDING = re.compile(r"^holding_(.+)$")
_BACKGROUND = re.compile(r"^(.+)_background$")
_PLACES = {"outdoors": "outdoors", "indoors": "indoors", "night": "at night", "day": "by day", "sky": "under the sky",
           "beach": "on a beach", "water": "by water", "forest": "in a forest", "city": "in a city",
           "classroom": "in a classroom", "bedroom": "in a bedroom", "snow": "in the snow", "rain": "in the rain",
           "scenery": "in a landscape", "space": "in space"}
_STYLES = {"monochrome": "monochrome", "greyscale": "greyscale", "sketch": "a sketch", "lineart": "line art",
           "chibi": "chibi style", "pixel_art": "pixel art", "realistic": "realistic style", "photorealistic": "photorealistic",
           "watercolor_(medium)": "watercolor", "traditional_media": "traditional media", "oekaki": "oekaki",
           "3d": "a 3D render", "official_art": "official art", "cel_shading": "cel shading", "flat_color": "flat colors",
           "comic": "a comic", "4koma": "a four-panel comic", "anime_coloring": "anime coloring", "retro_artstyle": "a retro art style"}


def sentence(tags: list[str], dictionary: TagDictionary) -> str:
    """A caption in sentences from canonical, already filtered tags (``captions.ordered_tags``)."""
    slots: dict[str, list[str]] = {k: [] for k in ("people", "character", "copyright", "artist", "features", "clothing",
                                                    "action", "background", "style", "other")}
    for tag in tags:
        slots[_slot(tag, dictionary.category(tag))].append(tag)
    first = _subject(slots["people"])
    who = [_name(t) for t in slots["character"]]
    series = [_name(t) for t in slots["copyright"]]
    if who:
        first += f", {_join(who)}" + (f" from {_join(series)}" if series else "")
    elif series:
        first += f" from {_join(series)}"
    clauses = [first]
    if slots["features"]:
        clauses.append("with " + _join([_words(t) for t in slots["features"]]))
    if slots["clothing"]:
        clauses.append("wearing " + _join([_garment(t) for t in slots["clothing"]]))
    if slots["action"]:
        clauses.append(_join([_action(t) for t in slots["action"]]))
    if slots["background"]:
        clauses.append(_join([_background(t) for t in slots["background"]]))
    text = _capital(", ".join(clauses)) + "."
    if slots["style"]:
        text += " " + _capital(_join([_STYLES[t] for t in slots["style"]])) + "."
    if slots["artist"]:
        text += " Art by " + _join([_name(t) for t in slots["artist"]]) + "."
    if slots["other"]:
        text += " Also: " + ", ".join(_words(t) for t in slots["other"]) + "."
    return text


def _slot(tag: str, category: str | None) -> str:
    if category in ("character", "copyright", "artist"):
        return category
    if _PEOPLE.match(tag) or tag in _MULTIPLE or tag in ("solo", "no_humans", "solo_focus"):
        return "people"
    if _HAIR.match(tag) or (_EYES.match(tag) and tag not in _EYES_NOT_FEATURES):
        return "features"
    if tag in _ACTIONS or _HOLDING.match(tag):
        return "action"
    if _BACKGROUND.match(tag) or tag in _PLACES:
        return "background"
    if tag in _STYLES:
        return "style"
    if tag.split("_")[-1] in _CLOTHING:
        return "clothing"
    return "other"


def _subject(people: list[str]) -> str:
    parts = []
    for tag in people:
        match = _PEOPLE.match(tag)
        if match:
            n, more, kind = int(match.group(1)), match.group(2), match.group(3)
            singular, plural = _NOUN[kind]
            count = _NUMBERS.get(n, str(n))
            parts.append(f"{count} {singular}" if n == 1 and not more else f"{'at least ' if more else ''}{count} {plural}")
        elif tag in _MULTIPLE:
            parts.append(_MULTIPLE[tag])
    if parts:
        return _join(parts)
    return "a scene with no people" if "no_humans" in people else "a picture"


def _words(tag: str) -> str:
    from .captions import is_emoticon

    return tag if is_emoticon(tag) else tag.replace("_", " ")


def _name(tag: str) -> str:
    """``hatsune_miku_(vocaloid)`` -> ``Hatsune Miku``: the qualifier in parentheses dropped, words capitalised."""
    base = re.sub(r"_\([^)]*\)$", "", tag)
    return " ".join(w[:1].upper() + w[1:] for w in base.split("_") if w)


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _garment(tag: str) -> str:
    phrase = _words(tag)
    return phrase if tag.split("_")[-1] in _PLURAL_GARMENTS else _article(phrase)


def _action(tag: str) -> str:
    held = _HOLDING.match(tag)
    if held:
        thing = _words(held.group(1))
        return "holding " + (thing if thing.endswith("s") else _article(thing))
    return _ACTIONS[tag]


def _background(tag: str) -> str:
    match = _BACKGROUND.match(tag)
    if match:
        return f"on {_article(_words(match.group(1)))} background"
    return _PLACES[tag]


def _join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]

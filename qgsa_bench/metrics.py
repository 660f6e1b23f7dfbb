"""Accuracy as each data set's publishers score it, and grounding metrics.

Each data set has its own rule (`SCORING`), whatever the number of references a sample has:

| data set | rule | source |
|---|---|---|
| `vqa-rad` | exact match of the normalised answer; reported for all, CLOSED and OPEN | the accuracy VQA-RAD papers report (e.g. MEVF, aioz-ai/MICCAI19-MedVQA `test.py`) |
| `aokvqa` direct answer | min(#direct answers equal to the prediction / 3, 1); questions marked `difficult_direct_answer` are left out | allenai/aokvqa `evaluation/eval_predictions.py` |
| `aokvqa` multiple choice | 1 if the picked choice is `choices[correct_choice_idx]` | the same script |
| `refcoco` | exact match against any one of the referent's expressions (each is a correct answer) | RefCOCO's annotation: several expressions per referent; the box metric is `qgsa grounding` |
| `shapes` | exact match (one reference answer) | this project's generator |
| `shapes-hires` | exact match (one reference answer) | this project's generator |

A sample without references (A-OKVQA's test split: the answers are private) has no score (None),
never 0. Normalisation (both sides) follows the official VQA evaluation (Antol et al.; the
VQA-Challenge `vqaEval.py`): newlines/tabs to spaces, punctuation removed or replaced by a space
depending on its neighbours, a period that is not a decimal point removed, then lower case, number
words to digits, articles dropped and apostrophe-less contractions restored. (A-OKVQA's script
compares the strings as given; a model's generated text needs the normalisation to be comparable.)
Grounding IoU is computed with shapely between the convex hull of the selected patches (in the
original image's pixels) and the ground-truth box; beside it, the pointing game (`pointing_hit`: the kept
patch nearest the kept patches' centroid, a hit when its centre is in the box) and the share of the kept
patches whose centre is in the box (`share_in_box`).
"""

from __future__ import annotations

import re

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!"]
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
# Apostrophe-less spellings and their standard forms (the official table's entries).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def soft_accuracy(prediction: str, references: list[str]) -> float:
    """min(#references equal to the prediction / 3, 1), after normalisation (A-OKVQA's direct answer)."""
    pred = normalize_answer(prediction)
    matches = sum(normalize_answer(r) == pred for r in references)
    return min(matches / 3.0, 1.0)


def exact_match(prediction: str, references: list[str]) -> float:
    """1 if the prediction equals any reference, after normalisation."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(r) == pred for r in references))


def _aokvqa_direct(prediction: str, sample) -> float | None:
    if sample.extra.get("difficult_direct_answer"):
        return None  # eval_predictions.py leaves these out of direct-answer accuracy
    return soft_accuracy(prediction, sample.answers)


def _exact(prediction: str, sample) -> float:
    return exact_match(prediction, sample.answers)


# data set -> (rule, what meta.json says of it)
SCORING = {
    "vqa-rad": (_exact, "exact match after VQA normalisation (all, CLOSED, OPEN)"),
    "aokvqa": (_aokvqa_direct, "direct answer: min(#matches/3, 1) without difficult_direct_answer questions; "
               "multiple choice: picked == choices[correct_choice_idx] (allenai/aokvqa evaluation/eval_predictions.py)"),
    "refcoco": (_exact, "exact match against any one of the referent's expressions"),
    "shapes": (_exact, "exact match"),
    "shapes-hires": (_exact, "exact match"),
}


def score(prediction: str, sample) -> float | None:
    """The sample's data set's rule (in [0, 1]); None when the sample has no public references."""
    if not sample.answers:
        return None
    if sample.dataset not in SCORING:
        raise ValueError(f"no scoring rule for data set '{sample.dataset}': add one to metrics.SCORING")
    return SCORING[sample.dataset][0](prediction, sample)


def multiple_choice_score(pick: int | None, sample) -> float | None:
    """1.0 if `pick` indexes the correct choice; None without choices or a public correct choice."""
    if pick is None or sample.correct_choice is None:
        return None
    return float(pick == sample.correct_choice)


# ---- grounding -----------------------------------------------------------------------------
def patch_boxes(indices, grid: int, width: float, height: float) -> list[tuple[float, float, float, float]]:
    """Patch indices (raster order on a grid x grid layout) -> (x0, y0, x1, y1) in original pixels.

    The model saw the image resized to a square, so patch columns span width/grid original pixels
    and rows height/grid: this undoes the resize."""
    cw, ch = width / grid, height / grid
    return [((i % grid) * cw, (i // grid) * ch, (i % grid + 1) * cw, (i // grid + 1) * ch) for i in indices]


def hull_iou(indices, grid: int, width: float, height: float, box) -> float:
    """IoU between the convex hull of the selected patches and box [x, y, w, h]."""
    return boxes_hull_iou(patch_boxes(indices, grid, width, height), box)


def boxes_hull_iou(rects, box) -> float:
    """IoU (0..1) between the convex hull of rectangles (x0, y0, x1, y1) and box [x, y, w, h], all in the same
    pixels; 0.0 for no rectangles."""
    from shapely.geometry import MultiPoint, box as rect

    corners = [(x, y) for x0, y0, x1, y1 in rects for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
    if not corners:
        return 0.0
    hull = MultiPoint(corners).convex_hull
    target = rect(box[0], box[1], box[0] + box[2], box[1] + box[3])
    union = hull.union(target).area
    return float(hull.intersection(target).area / union) if union > 0 else 0.0


def view_patch_boxes(indices, grid: int, view_boxes) -> list[tuple[float, float, float, float]]:
    """Patches of several views -> (x0, y0, x1, y1) in original pixels. `indices`: the joint frame of a split
    image (patch p of view j is j * grid^2 + p, p in raster order on the view's grid x grid patches);
    `view_boxes`: each view's rectangle in original pixels (models/views.Views.view_boxes), which its patches
    divide evenly (a view is a resize of its rectangle to a square)."""
    n = grid * grid
    out = []
    for i in indices:
        j, p = divmod(int(i), n)
        x0, y0, x1, y1 = view_boxes[j]
        cw, ch = (x1 - x0) / grid, (y1 - y0) / grid
        out.append((x0 + (p % grid) * cw, y0 + (p // grid) * ch, x0 + (p % grid + 1) * cw, y0 + (p // grid + 1) * ch))
    return out


def box_centres(rects) -> list[tuple[float, float]]:
    """Rectangles (x0, y0, x1, y1) -> their centres (x, y)."""
    return [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in rects]


def oracle_patches(grid: int, width: float, height: float, box, k: int) -> list[int]:
    """The best selection of at most k patches whose hull is a grid-aligned rectangle.

    For every rectangle of patches (r0..r1, c0..c1) near the box, its corner patches (up to 4) span
    exactly that rectangle; the one with the highest IoU is returned. With k >= 4 no selection whose
    hull is a rectangle does better, so this is the ceiling used in the grounding table."""
    cw, ch = width / grid, height / grid
    x0, y0, x1, y1 = box[0] / cw, box[1] / ch, (box[0] + box[2]) / cw, (box[1] + box[3]) / ch
    clamp = lambda v: min(max(v, 0), grid - 1)  # noqa: E731
    cols = sorted({clamp(int(v)) for v in (x0 - 1, x0, x0 + 1, x1 - 2, x1 - 1, x1)})
    rows = sorted({clamp(int(v)) for v in (y0 - 1, y0, y0 + 1, y1 - 2, y1 - 1, y1)})
    best, best_iou = [], -1.0
    for r0 in rows:
        for r1 in (r for r in rows if r >= r0):
            for c0 in cols:
                for c1 in (c for c in cols if c >= c0):
                    corners = sorted({r * grid + c for r in (r0, r1) for c in (c0, c1)})
                    if len(corners) > k:
                        continue
                    iou = hull_iou(corners, grid, width, height, box)
                    if iou > best_iou:
                        best, best_iou = corners, iou
    return best


def patch_centers(indices, grid: int, width: float, height: float) -> list[tuple[float, float]]:
    """Patch indices (raster order on a grid x grid layout) -> their centres (x, y) in original pixels."""
    cw, ch = width / grid, height / grid
    return [((i % grid + 0.5) * cw, (i // grid + 0.5) * ch) for i in indices]


def _inside(point: tuple[float, float], box) -> bool:
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


def share_in_box(indices, grid: int, width: float, height: float, box) -> float:
    """The share (0..1) of the patches whose centre lies inside box [x, y, w, h] (original pixels, edges
    included); 0.0 for no patches."""
    return centres_share_in_box(patch_centers(indices, grid, width, height), box)


def centres_share_in_box(centers, box) -> float:
    """The share (0..1) of the points (x, y) inside box [x, y, w, h] (edges included); 0.0 for none."""
    return sum(_inside(c, box) for c in centers) / len(centers) if centers else 0.0


def pointing_hit(indices, grid: int, width: float, height: float, box) -> bool:
    """The pointing game for a set of kept patches: the one point a selection "points at" is the kept patch
    nearest (Euclidean, original pixels) the centroid of the kept patches' centres (ties: the lowest index);
    a hit when that patch's centre lies inside box [x, y, w, h] (edges included). No patches: a miss.

    Defined on the kept set alone, so it applies alike to every selector (no scores or saliency map needed),
    and the point is always a kept patch: a selection split between two objects points at one of them, not
    at the empty space between them."""
    return centres_pointing_hit(patch_centers(sorted(indices), grid, width, height), box)


def centres_pointing_hit(centers, box) -> bool:
    """`pointing_hit` on kept regions given by their centres (x, y), in the order that breaks ties (the first
    nearest wins): the region nearest the centroid of the centres points; a hit when its centre lies in box
    [x, y, w, h] (edges included). None: a miss."""
    if not centers:
        return False
    mx = sum(c[0] for c in centers) / len(centers)
    my = sum(c[1] for c in centers) / len(centers)
    nearest = min(range(len(centers)), key=lambda j: ((centers[j][0] - mx) ** 2 + (centers[j][1] - my) ** 2, j))
    return _inside(centers[nearest], box)

"""Yes/no questions made from captions (as COCO-QA was made from COCO's captions, Ren et al. 2015), in the
`vqa-lines` format, so a user with only captioned photos can train and test a VQA model.

Rules, per photo, from its own captions only (each split's questions from that split's photos):
- **presence** ("is there a dog in the picture ?") and **scene** ("is this a kitchen ?"), about the concepts of
  `CONCEPTS` (about 100 objects and scenes). A caption names a concept when one of its words is the concept's word, a
  plural or a synonym (person: man, woman, boy, people, player ...; plane: airplane, jet; road: street).
- **yes**: most of the photo's captions name it (3 of 5). At most `per_photo` yes questions a photo, the concepts its
  captions name most.
- **no**, one per yes (a yes without a no to match is dropped): a concept no caption of the photo names. Half of
  them (rounded up) are *hard*: named by most captions of one of the photo's `neighbours` nearest photos of the split
  (the photos whose named concepts overlap its own most), so similar photos have it; the others are drawn by how often
  the concept is named in the split.

Failure cases, by design of the rules: captions do not name everything a photo shows (a "no" can be wrong: a
background car nobody mentioned); synonyms are a fixed list (a "puppy" is a dog, a "kitten" a cat, "automobile" is not
listed); negation and prepositions are not read ("a street without cars" names a car, "a plate next to a pizza box"
names a pizza); a word with two meanings counts as the concept ("bat" the animal is the baseball bat).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from captioner.data.records import CaptionRecord, Skipped
from captioner.data.vocab import tokenize
from captioner.errors import CaptionerError

if TYPE_CHECKING:
    import numpy as np

KINDS = ("presence", "scene")

# concept -> (kind, the words that name it: singular first). A mass noun's question has no article.
_OBJECTS = """person man men woman women boy boys girl girls people child children kid kids player players guy guys lady
 ladies person persons skier skiers surfer surfers skateboarder skateboarders
dog dogs puppy puppies|cat cats kitten kittens|horse horses|sheep|cow cows cattle|elephant elephants|bear bears
zebra zebras|giraffe giraffes|bird birds|car cars|bus buses|truck trucks|train trains|motorcycle motorcycles motorbike
bicycle bicycles bike bikes|airplane airplanes plane planes jet jets|boat boats|skateboard skateboards
surfboard surfboards|snowboard snowboards|kite kites|frisbee frisbees|ball balls|bat bats|racket rackets racquet
umbrella umbrellas
table tables|chair chairs|couch couches sofa sofas|bed beds|bench benches|desk desks|toilet toilets|sink sinks
oven ovens|stove stoves|refrigerator refrigerators fridge fridges|television televisions tv tvs|laptop laptops
computer computers|keyboard keyboards|phone phones cellphone cellphones|remote remotes|clock clocks|vase vases
mirror mirrors|window windows|door doors|fence fences|sign signs|building buildings|bridge bridges|tree trees
mountain mountains|plate plates|bowl bowls|cup cups mug mugs|pizza pizzas|sandwich sandwiches|cake cakes|hat hats
tie ties|bag bags backpack backpacks|book books|bottle bottles|banana bananas|donut donuts
 doughnut doughnuts"""
_MASS = "grass|water|snow|food|fruit fruits|broccoli|sand|luggage suitcase suitcases"
_PLURAL = "skis ski|flowers flower"
# Words asked about on their own that also name a wider concept above (a man is a person): a caption naming one names
# both, and neither is a "no" where the caption names the other (a photo of a woman gets no "is there a man ? no").
_NARROW = "man men guy guys|woman women lady ladies|child children kid kids boy boys girl girls|road roads"
ALSO = {"man": "person", "woman": "person", "child": "person", "road": "street"}
_SCENES = """street streets road roads|kitchen kitchens|bathroom bathrooms|bedroom bedrooms|beach beaches|field fields
park parks|city cities|airport airports|lake lakes|ocean oceans sea|river rivers|forest forests|zoo zoos
restaurant restaurants|office offices|living room"""


def _table() -> dict[str, tuple[str, tuple[str, ...]]]:
    concepts: dict[str, tuple[str, tuple[str, ...]]] = {}
    for kind, text in (
        ("object", _OBJECTS),
        ("mass", _MASS),
        ("plural", _PLURAL),
        ("object", _NARROW),
        ("scene", _SCENES),
    ):
        for entry in text.replace("\n ", " ").replace("\n", "|").split("|"):
            words = tuple(entry.split())
            if kind == "scene" and words == ("living", "room"):
                words = ("living room",)
            concepts[words[0]] = (kind, words)
    concepts["road"] = ("scene", concepts["road"][1])
    return concepts


CONCEPTS = _table()


PHRASINGS = 4  # ways each kind of question can be put (`phrasing` 0 is the fixed captionqa test's)


def question_for(concept: str, phrasing: int = 0) -> tuple[str, str]:
    """(question text with " ?", kind: presence or scene) for a concept of `CONCEPTS`; `phrasing` 0-3 picks one way of
    asking ("is there a dog in the picture ?", "is there a dog ?", "do you see a dog ?", "does the photo show a dog ?";
    "is this a kitchen ?", "is it a kitchen ?", "is this picture of a kitchen ?", "does this look like a kitchen ?")."""
    kind, _ = CONCEPTS[concept]
    article = "an" if concept[0] in "aeiou" else "a"
    if kind == "scene":
        forms = (
            "is this {a} {c} ?",
            "is it {a} {c} ?",
            "is this picture of {a} {c} ?",
            "does this look like {a} {c} ?",
        )
        return forms[phrasing % PHRASINGS].format(a=article, c=concept), "scene"
    thing = concept if kind in ("mass", "plural") else f"{article} {concept}"
    be = "are" if kind == "plural" else "is"
    forms = (
        f"{be} there {{t}} in the picture ?",
        f"{be} there {{t}} ?",
        "do you see {t} ?",
        "does the photo show {t} ?",
    )
    return forms[phrasing % PHRASINGS].format(t=thing), "presence"


_WORDS: dict[str, set[str]] = {}
for _concept, (_, _words) in CONCEPTS.items():
    for _word in _words:
        _WORDS.setdefault(_word, set()).add(_concept)


def named(caption: str) -> set[str]:
    """The concepts one caption names (its words, plurals and synonyms; "living room" as a phrase)."""
    words = tokenize(caption)
    text = f" {' '.join(words)} "
    return {c for w in words for c in _WORDS.get(w, ())} | {
        c for phrase, cs in _WORDS.items() if " " in phrase and f" {phrase} " in text for c in cs
    }


@dataclass
class GeneratedQuestion:
    image: str  # the photo's path
    question: str  # ending in " ?"
    answer: str  # "yes" or "no"
    kind: str  # "presence" or "scene"
    concept: str
    hard: bool = False  # a "no" about a concept that similar photos have


@dataclass
class Generated:
    questions: list[GeneratedQuestion] = field(default_factory=list)
    skipped: Skipped = field(default_factory=Skipped)

    def counts(self) -> dict[str, int]:
        """Questions by kind and answer ("presence yes": n, ...), and the hard "no" count."""
        counted = Counter(f"{q.kind} {q.answer}" for q in self.questions)
        counted["hard no"] = sum(q.hard for q in self.questions)
        return dict(sorted(counted.items()))


def questions_from_captions(
    records: Sequence[CaptionRecord],
    kinds: Iterable[str] = KINDS,
    per_photo: int = 2,
    neighbours: int = 10,
    seed: int = 0,
    phrasings: int = 1,
) -> Generated:
    """Balanced yes/no questions about the photos of one split (the rules are the module's docstring).

    Args:
        records: CaptionRecord. One split's photos with their captions.
        kinds: the kinds of question to make ("presence", "scene").
        per_photo: int. Yes questions a photo at most (as many no questions).
        neighbours: int. Photos compared with each photo to find its hard no concepts.
        seed: int. The same seed gives the same questions.
        phrasings: int. 1 asks every question one way (the captionqa test's); 2-4 draw each question's wording from
            that many (`question_for`), so a model trained on them does not hang on one template.
    """
    if not 1 <= phrasings <= PHRASINGS:
        raise CaptionerError(f"--phrasings must be between 1 and {PHRASINGS} (got {phrasings})")
    kinds = set(kinds)
    rng = random.Random(seed)
    out = Generated()
    votes: list[Counter] = []
    for record in records:
        counted: Counter = Counter()
        for caption in record.captions:
            counted.update(named(caption))
        votes.append(counted)
    majority = [
        {c for c, n in v.items() if 2 * n > len(r.captions) and question_for(c)[1] in kinds}
        for r, v in zip(records, votes)
    ]
    frequency = Counter(c for m in majority for c in m)
    common = [c for c, _ in frequency.most_common()]
    weights = [frequency[c] for c in common]
    similar = _nearest(majority, votes, common, neighbours)  # (photos, neighbours) indices
    for index, (record, counted, yes) in enumerate(zip(records, votes, majority)):
        if not counted:
            out.skipped.add("photo whose captions name no known concept", record.image_id)
            continue
        if not yes:
            out.skipped.add("photo with no concept named by most of its captions", record.image_id)
            continue
        chosen: list[str] = []
        for concept in sorted(
            yes, key=lambda c: (ALSO.get(c) is None, -counted[c], c)
        ):  # a man (when most say so) before a person
            if len(chosen) < per_photo and not any(ALSO.get(concept) == c or ALSO.get(c) == concept for c in chosen):
                chosen.append(concept)  # not both a person and a man
        never = {
            c for c in common if c not in counted and ALSO.get(c) not in counted
        }  # named by no caption of the photo
        hard = sorted({c for j in similar[index] for c in majority[j]} & never)
        rng.shuffle(hard)
        noes: list[tuple[str, bool]] = [(c, True) for c in hard[: (len(chosen) + 1) // 2]]
        for _ in range(20 * len(chosen)):
            if len(noes) >= len(chosen) or not never:
                break
            concept = rng.choices(common, weights)[0]
            if concept in never and concept not in {c for c, _ in noes}:
                noes.append((concept, False))
        if not noes:
            out.skipped.add("photo with no concept to answer no about", record.image_id)
            continue
        chosen = chosen[: len(noes)]  # one no per yes, always
        for concept in chosen:
            text, kind = question_for(concept, rng.randrange(phrasings) if phrasings > 1 else 0)
            out.questions.append(GeneratedQuestion(record.image, text, "yes", kind, concept))
        for concept, is_hard in noes:
            text, kind = question_for(concept, rng.randrange(phrasings) if phrasings > 1 else 0)
            out.questions.append(GeneratedQuestion(record.image, text, "no", kind, concept, is_hard))
    return out


def _nearest(
    majority: list[set[str]], votes: list[Counter], common: list[str], k: int, chunk: int = 1024
) -> np.ndarray:
    """For each photo, the `k` other photos whose majority concepts overlap its named concepts most: (photos, k)."""
    import numpy as np

    column = {c: i for i, c in enumerate(common)}
    has = np.zeros((len(majority), max(len(common), 1)), np.float32)  # (photos, concepts) named by most captions
    names = np.zeros_like(has)  # (photos, concepts) named by any caption
    for i, (yes, counted) in enumerate(zip(majority, votes)):
        has[i, [column[c] for c in yes]] = 1
        names[i, [column[c] for c in counted if c in column]] = 1
    k = min(k, len(majority) - 1)
    nearest = np.zeros((len(majority), max(k, 0)), np.int64)
    for start in range(0, len(majority), chunk):
        overlap = names[start : start + chunk] @ has.T  # (chunk, photos)
        overlap[np.arange(len(overlap)), np.arange(start, start + len(overlap))] = -1  # never itself
        if k > 0:
            nearest[start : start + chunk] = np.argpartition(-overlap, k - 1, axis=1)[:, :k]
    return nearest


def vqa_lines(questions: Sequence[GeneratedQuestion]) -> str:
    """The `vqa-lines` text of `questions`: `NAME#N<TAB>question ? answer`, N counting each photo's questions."""
    seen: Counter = Counter()
    lines = []
    for q in questions:
        name = q.image.replace("\\", "/").rsplit("/", 1)[-1]
        lines.append(f"{name}#{seen[name]}\t{q.question} {q.answer}")
        seen[name] += 1
    return "".join(line + "\n" for line in lines)

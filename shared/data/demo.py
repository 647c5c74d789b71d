"""The built-in demo data set: a synthetic catalog and users whose interests drift over time.

Everything is generated from the vocabulary tables below with one seeded ``numpy`` Generator, so
a seed always gives byte-identical data. See docs/demo-data.md for the generative process and why
it has the structure it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedrec.shared.data.dataset import Dataset, FloatArray, IntArray, Interactions, UserTexts


@dataclass(frozen=True)
class _Topic:
    name: str
    short: str
    subthemes: tuple[tuple[str, ...], ...]  # each sub-theme: several wordings of the same idea


def _topic(name: str, short: str, *subthemes: str) -> _Topic:
    return _Topic(name, short, tuple(tuple(s.split("|")) for s in subthemes))


_TOPICS: tuple[_Topic, ...] = (
    _topic(
        "sourdough baking",
        "sourdough",
        "rye starters|keeping a rye sourdough culture|dark rye levain",
        "open crumb loaves|high-hydration sourdough dough|airy, wet bread doughs",
        "scoring bread|blade patterns on a loaf|decorative scoring and ear formation",
        "sourdough discard recipes|using up leftover starter|discard crackers and pancakes",
        "whole grain sourdough|spelt and einkorn loaves|heritage wheat bread",
    ),
    _topic(
        "trail running",
        "trail running",
        "ultramarathon training|training for 100-mile races|preparing for ultra distances",
        "steep mountain climbs|vertical kilometre races|running uphill on technical terrain",
        "trail running shoes|grip and cushioning in trail shoes|choosing off-road footwear",
        "night running with headlamps|running trails after dark|headlamps and night races",
        "race-day fuelling|energy gels and hydration on the trail|eating during long runs",
    ),
    _topic(
        "jazz piano",
        "jazz piano",
        "rootless chord voicings|left-hand jazz voicings|shell and rootless chords",
        "bebop improvisation|soloing over bebop changes|bebop lines and enclosures",
        "stride piano|Harlem stride left hand|ragtime and stride rhythms",
        "reharmonizing jazz standards|new chords for old standards|substitutions in standards",
        "latin jazz montunos|salsa piano patterns|Afro-Cuban montuno grooves",
    ),
    _topic(
        "vintage cameras",
        "film camera",
        "rangefinder cameras|classic Leica-style rangefinders|focusing with a rangefinder patch",
        "medium format folding cameras|old 120 film folders|bellows cameras for 6x9 negatives",
        "restoring old lenses|cleaning fungus from vintage glass|lens repair and recalibration",
        "home darkroom developing|developing black and white film at home|mixing developer",
        "instant film cameras|Polaroid SX-70 and friends|shooting instant pictures",
    ),
    _topic(
        "astronomy",
        "stargazing",
        "deep-sky astrophotography|photographing galaxies and nebulae|long exposures of nebulae",
        "Dobsonian telescopes|choosing a big reflector telescope|building a Dobsonian mount",
        "observing the planets|Jupiter and Saturn through a telescope|planetary detail",
        "meteor showers|watching the Perseids|counting shooting stars",
        "solar observing|safe viewing of sunspots|hydrogen-alpha views of the Sun",
    ),
    _topic(
        "birdwatching",
        "birding",
        "shorebird identification|telling sandpipers apart|waders on mudflats",
        "learning bird song|identifying birds by ear|dawn chorus calls",
        "backyard bird feeders|attracting garden birds|feeder seed and suet",
        "raptor migration|hawk watching in autumn|eagles and falcons on the move",
        "owls at night|finding owls after dark|nocturnal owl calls",
    ),
    _topic(
        "home espresso",
        "espresso",
        "dialing in a grinder|grind size for espresso|burr grinders and dose",
        "latte art|pouring rosettas and hearts|milk texture for latte art",
        "lever espresso machines|manual lever pulls|spring lever brewers",
        "light roast single origins|bright single-origin espresso|fruity light roasted beans",
        "home coffee roasting|roasting green beans at home|small-batch roasting profiles",
    ),
    _topic(
        "vegetable gardening",
        "gardening",
        "growing tomatoes|heirloom tomato plants|staking and pruning tomatoes",
        "raised garden beds|building raised beds|no-dig raised bed soil",
        "composting|hot compost piles|worm bins and kitchen scraps",
        "saving seeds|keeping seeds from your own vegetables|open-pollinated seed saving",
        "winter growing|cold frames and cloches|vegetables through the frost",
    ),
    _topic(
        "woodworking",
        "woodworking",
        "hand-cut dovetails|cutting dovetail joints by hand|sawing and chopping dovetails",
        "hand planes|tuning a smoothing plane|sharpening plane irons",
        "wood turning|turning bowls on a lathe|spindle and bowl turning",
        "furniture finishing|shellac and oil finishes|French polishing wood",
        "Japanese joinery|interlocking Japanese wood joints|joinery without nails or screws",
    ),
    _topic(
        "chess",
        "chess",
        "opening repertoire|building a chess opening repertoire|sharp openings like the Sicilian",
        "endgame technique|rook and pawn endgames|converting winning endgames",
        "tactics puzzles|forks, pins and skewers|daily chess tactics training",
        "blitz chess|fast time-control games|playing three-minute chess",
        "classic chess games|annotated games of world champions|famous chess matches",
    ),
    _topic(
        "mechanical keyboards",
        "keyboard",
        "keyboard switches|linear versus tactile switches|choosing mechanical switches",
        "custom keycaps|keycap sets and profiles|double-shot and dye-sub keycaps",
        "keyboard firmware|QMK layouts and macros|programming keyboard layers",
        "split ergonomic keyboards|ortholinear and split layouts|typing on a split board",
        "lubing switches|quieting a keyboard|foam mods and stabilizer tuning",
    ),
    _topic(
        "fly fishing",
        "fly fishing",
        "dry fly fishing|trout rising to dry flies|fishing floating flies",
        "fly tying|tying your own flies|hooks, feathers and thread at the vise",
        "euro nymphing|tight-line nymph fishing|fishing weighted nymphs",
        "saltwater flats|bonefish on the flats|sight-fishing in shallow saltwater",
        "spey casting|two-handed rods for salmon|switch and spey casts",
    ),
    _topic(
        "rock climbing",
        "climbing",
        "bouldering|short problems without ropes|bouldering moves and crash pads",
        "trad climbing|placing cams and nuts|traditional protection on rock",
        "finger strength training|hangboard workouts|training crimps and pockets",
        "alpine multi-pitch routes|long mountain climbs|multi-pitch ropework",
        "indoor lead climbing|clipping on gym lead routes|lead falls at the climbing wall",
    ),
    _topic(
        "cake decorating",
        "cake",
        "buttercream piping|piped buttercream flowers|piping bags and nozzles",
        "fondant work|covering cakes in fondant|sugar paste figures",
        "tiered wedding cakes|stacking wedding cakes|multi-tier celebration cakes",
        "chocolate tempering|glossy tempered chocolate|chocolate decorations and shards",
        "French macarons|macaron shells and feet|almond meringue cookies",
    ),
    _topic(
        "knitting",
        "knitting",
        "sock knitting|knitting socks on small needles|heels and toes for socks",
        "stranded colorwork|Fair Isle patterns|two-colour knitting",
        "lace shawls|knitting lace|openwork shawl patterns",
        "top-down sweaters|seamless pullovers|knitting a jumper in the round",
        "hand-dyed yarn|dyeing yarn at home|spinning and dyeing wool",
    ),
    _topic(
        "urban sketching",
        "sketching",
        "watercolor sketching|loose watercolor washes|quick paint studies on location",
        "ink line drawing|fountain pen sketches|bold ink linework",
        "street perspective|drawing buildings in perspective|vanishing points on city streets",
        "travel sketchbooks|illustrated travel journals|sketching on the road",
        "sketching people|quick figures in cafes|drawing people in motion",
    ),
    _topic(
        "home fermentation",
        "fermenting",
        "making kimchi|napa cabbage kimchi|spicy fermented cabbage",
        "brewing kombucha|kombucha SCOBY care|second-ferment fizzy kombucha",
        "fermented hot sauce|chili mash fermentation|lacto-fermented pepper sauce",
        "koji and miso|growing koji mold|homemade miso paste",
        "sauerkraut and pickles|crunchy brine pickles|classic sauerkraut",
    ),
    _topic(
        "cycling",
        "cycling",
        "gravel riding|gravel bikes on dirt roads|mixed-surface rides",
        "bike maintenance|fixing your own bike|tuning gears and brakes",
        "bikepacking|overnight trips by bike|bike bags and wild camping",
        "road cycling climbs|climbing mountain passes by bike|hill repeats on the road bike",
        "bike commuting|riding to work|e-bikes for the daily commute",
    ),
    _topic(
        "board games",
        "board game",
        "worker placement games|Euro-style strategy games|resource and worker placement",
        "cooperative board games|team games against the board|co-op games like Pandemic",
        "deck-building games|building a card deck during play|deck-builders and engines",
        "miniature painting|painting tabletop miniatures|brush work on small figures",
        "legacy campaign games|board games that change as you play|multi-session campaigns",
    ),
    _topic(
        "indie video games",
        "indie game",
        "pixel art platformers|retro-style jumping games|precision platformers",
        "roguelikes|permadeath dungeon runs|procedurally generated runs",
        "cozy farming games|relaxing farm life sims|gentle games about crops and villages",
        "metroidvanias|interconnected map exploration|ability-gated adventure maps",
        "narrative adventure games|story-driven indie games|walking simulators",
    ),
    _topic(
        "classical guitar",
        "classical guitar",
        "tremolo technique|right-hand tremolo on guitar|fingerstyle tremolo studies",
        "Spanish guitar repertoire|Albeniz and Tarrega pieces|romantic Spanish guitar music",
        "Baroque lute transcriptions|Bach on the guitar|Baroque suites for guitar",
        "flamenco rhythms|flamenco rasgueado|compas and strumming patterns",
        "sight-reading for guitar|reading standard notation on guitar|guitar reading drills",
    ),
    _topic(
        "aquariums",
        "fish tank",
        "planted tank aquascaping|aquascapes with live plants|nature-style planted aquariums",
        "reef aquariums|keeping corals|saltwater reef tanks",
        "freshwater shrimp|keeping cherry shrimp|breeding dwarf shrimp",
        "cichlid tanks|African cichlids|colorful cichlids and rockwork",
        "nano aquariums|tiny desktop tanks|small aquariums under 30 litres",
    ),
    _topic(
        "houseplants",
        "houseplant",
        "succulents and cacti|caring for cacti|desert plants indoors",
        "Monstera and aroids|rare aroid collecting|philodendrons and monsteras",
        "plant propagation|cuttings in water|rooting new plants from cuttings",
        "orchid care|getting orchids to rebloom|moth orchids indoors",
        "houseplant pests|getting rid of fungus gnats|spider mites and mealybugs",
    ),
    _topic(
        "ancient history",
        "history",
        "the Roman legions|Roman army life|legionaries and Roman campaigns",
        "Egyptian pharaohs|the Old Kingdom and the pyramids|royal tombs of ancient Egypt",
        "ancient Greek philosophy|Socrates, Plato and Aristotle|Stoics and Greek thinkers",
        "the Bronze Age collapse|the end of the Bronze Age|the Sea Peoples and fallen palaces",
        "the Silk Road|ancient trade routes across Asia|caravans between China and Rome",
    ),
    _topic(
        "Italian cooking",
        "Italian food",
        "fresh pasta|hand-rolled egg pasta|making ravioli and tagliatelle",
        "risotto|creamy Italian rice dishes|saffron risotto",
        "Neapolitan pizza|wood-fired pizza dough|leopard-spotted pizza crust",
        "slow-cooked ragu|Bolognese and meat sauces|Sunday sauce simmered for hours",
        "Italian desserts|tiramisu and panna cotta|cannoli and Italian sweets",
    ),
    _topic(
        "Japanese cooking",
        "Japanese food",
        "ramen broth|tonkotsu and shoyu ramen|homemade ramen noodles and soup",
        "sushi rice and rolls|seasoning sushi rice|rolling maki at home",
        "izakaya small plates|Japanese pub food|yakitori and bar snacks",
        "bento boxes|packed Japanese lunches|building a balanced bento",
        "dashi and umami|kombu and bonito stock|Japanese soup stocks",
    ),
    _topic(
        "digital photography",
        "photo",
        "street photography|candid photos of strangers|shooting on busy sidewalks",
        "portrait lighting|off-camera flash for portraits|lighting faces in the studio",
        "long exposure landscapes|smooth water and moving clouds|ND filters for landscapes",
        "wildlife photography|telephoto shots of animals|photographing wildlife from a hide",
        "photo editing|color grading in Lightroom|editing raw files",
    ),
    _topic(
        "electronic music production",
        "music production",
        "modular synthesizers|Eurorack patching|building a modular synth rack",
        "drum programming|programming beats in a DAW|drum machines and grooves",
        "mixing and mastering|balancing a mix|loudness and mastering chains",
        "ambient sound design|textures and drones|atmospheric pads and field recordings",
        "sampling hip-hop beats|chopping samples|boom bap beat making",
    ),
    _topic(
        "science fiction novels",
        "sci-fi",
        "space opera|galactic empires and starships|epic interstellar sagas",
        "cyberpunk fiction|hackers and neon megacities|near-future corporate dystopias",
        "hard science fiction|physics-accurate space stories|realistic orbital mechanics",
        "post-apocalyptic fiction|survivors after the collapse|wastelands and new societies",
        "time travel stories|paradoxes and time loops|journeys through time",
    ),
    _topic(
        "mystery novels",
        "mystery",
        "cozy mysteries|village whodunits|gentle amateur sleuth stories",
        "Nordic noir|Scandinavian crime fiction|bleak northern detective novels",
        "locked-room puzzles|impossible crime stories|fair-play puzzle mysteries",
        "hardboiled detectives|private eyes and noir streets|tough-talking detective fiction",
        "true crime|real criminal cases|investigations of real murders",
    ),
    _topic(
        "personal finance",
        "money",
        "index fund investing|low-cost index funds|passive investing for the long run",
        "household budgeting|tracking monthly spending|zero-based budgets",
        "early retirement|the FIRE movement|retiring decades early",
        "rental property investing|becoming a landlord|buying rental real estate",
        "paying off debt|debt snowball plans|getting out of credit card debt",
    ),
    _topic(
        "yoga",
        "yoga",
        "vinyasa flow|flowing sun salutations|breath-linked vinyasa sequences",
        "yin yoga|long-held restorative poses|slow stretching in yin",
        "breathwork|pranayama breathing exercises|calming breath practice",
        "yoga for desk workers|mobility for stiff backs|stretches for long office days",
        "arm balances and inversions|headstands and crow pose|learning to go upside down",
    ),
    _topic(
        "strength training",
        "lifting",
        "powerlifting|squat, bench and deadlift|training for a powerlifting meet",
        "kettlebell training|kettlebell swings and snatches|kettlebell conditioning",
        "calisthenics|bodyweight training|pull-ups, dips and the muscle-up",
        "hypertrophy programming|building muscle size|volume and progressive overload",
        "Olympic weightlifting|the snatch and clean and jerk|barbell technique for Olympic lifts",
    ),
    _topic(
        "backpacking",
        "backpacking",
        "ultralight gear|cutting base weight|ultralight tents and packs",
        "thru-hiking|long trails like the Appalachian Trail|months on a long trail",
        "backcountry cooking|camp stove meals|dehydrated trail food",
        "map and compass navigation|orienteering in the backcountry|route finding without GPS",
        "winter camping|camping in snow|cold-weather sleep systems",
    ),
    _topic(
        "beekeeping",
        "beekeeping",
        "hive inspections|checking frames and brood|opening the hive safely",
        "honey harvesting|extracting honey|uncapping and bottling honey",
        "swarm prevention|catching swarms|managing a crowded colony",
        "varroa mite control|treating bees for mites|healthy colonies without mites",
        "queen rearing|raising new queens|grafting larvae for queen cells",
    ),
    _topic(
        "sailing",
        "sailing",
        "dinghy racing|small boat racing tactics|sailing dinghies around the buoys",
        "coastal cruising|weekend cruises along the coast|anchoring in quiet bays",
        "knots and rigging|essential sailing knots|rope work and rigging",
        "celestial navigation|navigating with a sextant|finding position by the stars",
        "boat maintenance|antifouling and hull repair|keeping an old boat afloat",
    ),
    _topic(
        "pottery",
        "pottery",
        "wheel throwing|centering clay on the wheel|throwing bowls and mugs",
        "glaze chemistry|mixing your own glazes|glaze recipes and testing",
        "hand-building|coil and slab pottery|pinch pots and slab forms",
        "raku firing|smoky raku pottery|crackle glazes from raku kilns",
        "kiln firing schedules|electric kiln firing|cone temperatures and firing cycles",
    ),
    _topic(
        "tea",
        "tea",
        "matcha and Japanese green tea|sencha and gyokuro|whisking matcha",
        "Chinese oolong|roasted and floral oolongs|Taiwanese high-mountain oolong",
        "pu-erh tea|aged pu-erh cakes|fermented dark teas",
        "gongfu brewing|brewing tea in a gaiwan|many short steeps",
        "herbal tea blends|caffeine-free infusions|blending your own tisanes",
    ),
    _topic(
        "wine",
        "wine",
        "natural wine|low-intervention winemaking|orange and natural wines",
        "Burgundy pinot noir|red Burgundy villages|pinot noir from Burgundy",
        "food and wine pairing|matching wine with dinner|pairing wine and cheese",
        "blind tasting|tasting notes like a sommelier|deductive wine tasting",
        "Champagne and sparkling wine|grower Champagne|traditional method sparkling wines",
    ),
    _topic(
        "retro computing",
        "retro computer",
        "8-bit home computers|the Commodore 64 and ZX Spectrum|programming 8-bit machines",
        "restoring old computers|recapping vintage motherboards|repairing retro hardware",
        "the demoscene|demos and cracktros|real-time demo effects",
        "emulation|running old software in emulators|emulating classic consoles",
        "DOS games|classic MS-DOS gaming|sound cards and DOS adventure games",
    ),
    _topic(
        "space exploration",
        "space",
        "the Apollo missions|Moon landings|Apollo astronauts and the lunar module",
        "Mars rovers|rovers on the red planet|Curiosity and Perseverance on Mars",
        "reusable rockets|rocket landings and reuse|booster recovery and launch costs",
        "life on the space station|astronauts on the ISS|living in orbit",
        "exoplanets|planets around other stars|searching for habitable worlds",
    ),
    _topic(
        "dog training",
        "dog",
        "puppy training|house training a puppy|first weeks with a new puppy",
        "dog agility|agility courses and jumps|weave poles and tunnels",
        "leash reactivity|calming a reactive dog|walking a dog that lunges",
        "dog nutrition|raw and home-cooked dog food|choosing dog food",
        "trick training|clicker training tricks|teaching a dog new tricks",
    ),
)

SUBTHEMES_PER_TOPIC = 5
TOPIC_NAMES: tuple[str, ...] = tuple(t.name for t in _TOPICS)

_KINDS = (
    "book",
    "video course",
    "podcast episode",
    "workshop",
    "field guide",
    "documentary",
    "online class",
    "magazine feature",
    "blog series",
    "handbook",
    "lecture series",
    "newsletter issue",
)
_TITLES = (
    "{hook}: {w}",
    "The {adj} Guide to {w}",
    "{w} for {audience}",
    "Notes on {w}",
    "{number} Lessons in {w}",
    "{w}, {hook}",
    "Everything About {w}",
)
_HOOKS = (
    "Slow and Steady",
    "Beyond the Basics",
    "First Steps",
    "The Long Way Round",
    "Small Wins",
    "Against the Grain",
    "Quiet Hours",
    "Field Notes",
    "Weekend Sessions",
    "Second Nature",
    "Getting It Right",
    "Tried and Tested",
)
_ADJECTIVES = (
    "Practical",
    "Complete",
    "Curious",
    "Honest",
    "Illustrated",
    "Pocket",
    "Unhurried",
    "Modern",
    "Essential",
    "Little",
)
_AUDIENCES = (
    "beginners",
    "weekend hobbyists",
    "busy people",
    "seasoned enthusiasts",
    "families",
    "total newcomers",
    "the curious",
)
_NUMBERS = ("Five", "Seven", "Ten", "Twelve", "Thirty")
_DESCRIPTIONS = (
    "{a_kind} on {w}, {angle}.",
    "This {kind} covers {w} {angle}, aimed at {audience}.",
    "{angle_cap}: {a_kind} about {w} for {short} fans.",
    "{a_kind} that walks through {w}, {angle}.",
    "What every {short} fan should know about {w}, as {a_kind} {angle}.",
)
_ANGLES = (
    "with step-by-step examples",
    "from first steps to advanced tricks",
    "told through real stories",
    "with practical checklists",
    "with plenty of photos",
    "packed with common mistakes and fixes",
    "with a focus on technique",
    "in short, friendly chapters",
    "based on years of experience",
    "with interviews and case studies",
)
_SMALL_WORDS = frozenset({"a", "an", "and", "the", "of", "on", "in", "for", "to", "by", "at", "or"})

_PRAISE = ("loved", "really enjoyed", "big fan of", "adored", "was impressed by", "dug")
_PANS = ("didn't love", "was let down by", "couldn't get into", "not a fan of")
_FILLERS = ("", "", "", "tbh ", "honestly ", "imo ", "ngl ", "fwiw ")
_ENDINGS = (".", ".", "!", "!!", "...", "")
_REVIEWS_GOOD = (
    "{praise} this {kind}, great stuff on {w}",
    "{praise} it - finally {a_kind} that gets {w} right",
    "exactly what I wanted for {w}",
    "{praise} this one. more {short} content like this please",
    "so useful if you're into {w}",
)
_REVIEWS_MIXED = (
    "decent {kind} on {w}, a bit slow in places",
    "ok intro to {w}, nothing new for me though",
    "some good bits on {w} but too long",
)
_REVIEWS_BAD = (
    "{pan} this {kind}, too little about {w}",
    "{pan} it. the part on {w} felt thin",
    "not worth it if you already know {w}",
)
_COMMENTS = (
    "saving this for later, need more {w} in my life",
    "anyone else tried this for {w}?",
    "good reminder to get back to {short}",
    "halfway through, the {w} part is the best so far",
)
_QUERIES = (
    "{w}",
    "best {w} {kind}",
    "{w} for beginners",
    "how to get into {short}",
    "{short} {w} tips",
    "recommendations for {w}",
    "{w} {kind} recommendations",
    "something about {w}",
)

_SESSION_GAP_S = 20 * 60  # median gap between consecutive items in the same sub-theme
_BREAK_GAP_S = 2 * 86400  # median gap when the user moves on to something else
_START_SPAN_S = 2 * 365 * 86400  # users start at different times within two years
_MAX_REVIEW_DELAY_S = 3 * 86400


@dataclass(frozen=True)
class DemoConfig:
    """How to generate the demo data set; every field has a sensible default.

    ``drift`` is the share of a user's interest that has moved from their early topics to their
    late topics by the end of their timeline (0: stationary, 1: fully replaced). ``stickiness``
    is the chance that the next interaction stays in the previous one's sub-theme.
    """

    seed: int = 0
    num_items: int = 3000
    num_users: int = 600
    num_topics: int = len(_TOPICS)
    min_interactions: int = 20
    max_interactions: int = 80
    min_user_topics: int = 2
    max_user_topics: int = 4
    drift: float = 0.9
    stickiness: float = 0.3
    subtheme_concentration: float = 1.0
    topic_popularity_skew: float = 0.5
    item_popularity_skew: float = 1.0
    offtopic_rate: float = 0.1
    review_rate: float = 0.08
    min_queries: int = 1
    max_queries: int = 4
    typo_rate: float = 0.03
    unrated_rate: float = 0.3
    start_time: int = 1_609_459_200  # 2021-01-01 00:00:00 UTC

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"DemoConfig: {message}")

        check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        check(
            2 <= self.num_topics <= len(_TOPICS),
            f"num_topics must be in [2, {len(_TOPICS)}], got {self.num_topics}",
        )
        check(
            1 <= self.min_interactions <= self.max_interactions,
            "need 1 <= min_interactions <= max_interactions, "
            f"got {self.min_interactions} and {self.max_interactions}",
        )
        check(self.num_users >= 1, f"num_users must be >= 1, got {self.num_users}")
        min_items = max(self.num_topics * SUBTHEMES_PER_TOPIC, self.max_interactions)
        check(
            self.num_items >= min_items,
            f"num_items must be >= {min_items} (one item per sub-theme and enough for "
            f"max_interactions), got {self.num_items}",
        )
        check(
            2 <= self.min_user_topics <= self.max_user_topics <= self.num_topics,
            "need 2 <= min_user_topics <= max_user_topics <= num_topics, "
            f"got {self.min_user_topics} and {self.max_user_topics}",
        )
        check(
            0 <= self.min_queries <= self.max_queries,
            f"need 0 <= min_queries <= max_queries, got {self.min_queries} and {self.max_queries}",
        )
        rates = ("drift", "stickiness", "offtopic_rate", "review_rate", "typo_rate", "unrated_rate")
        for name in rates:
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")
        check(self.subtheme_concentration > 0, "subtheme_concentration must be > 0")
        check(self.topic_popularity_skew >= 0, "topic_popularity_skew must be >= 0")
        check(self.item_popularity_skew >= 0, "item_popularity_skew must be >= 0")
        check(self.start_time >= 0, f"start_time must be >= 0, got {self.start_time}")


@dataclass(frozen=True)
class _Catalog:
    topics: list[_Topic]  # in use; sub-theme s is in topics[s // SUBTHEMES_PER_TOPIC]
    subtheme: IntArray  # per item, its sub-theme
    members: list[IntArray]  # per sub-theme, its items
    weights: list[FloatArray]  # per sub-theme, its items' popularity (sums to 1)
    kinds: list[str]  # per item
    texts: list[str]


@dataclass(frozen=True)
class _Voice:
    """A user's way of writing."""

    lowercase: bool
    filler: str
    ending: str
    praise: str
    pan: str
    typo_rate: float


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _title_case(text: str) -> str:
    words = text.split(" ")
    return " ".join(
        w if (w[:1].isupper() or (i > 0 and w in _SMALL_WORDS)) else w[:1].upper() + w[1:]
        for i, w in enumerate(words)
    )


def _make_catalog(config: DemoConfig, rng: np.random.Generator) -> _Catalog:
    topics = [_TOPICS[int(i)] for i in rng.permutation(len(_TOPICS))[: config.num_topics]]
    num_subthemes = len(topics) * SUBTHEMES_PER_TOPIC
    subtheme = rng.permutation(np.arange(config.num_items, dtype=np.int64) % num_subthemes)
    members = [np.flatnonzero(subtheme == s) for s in range(num_subthemes)]
    weights = []
    for items in members:
        w = (1.0 + rng.permutation(len(items))) ** -config.item_popularity_skew
        weights.append(w / w.sum())
    kinds, texts = [], []
    for s in subtheme:
        topic = topics[s // SUBTHEMES_PER_TOPIC]
        wordings = topic.subthemes[s % SUBTHEMES_PER_TOPIC]
        first, second = rng.choice(len(wordings), size=2, replace=False)
        kind, angle = _pick(rng, _KINDS), _pick(rng, _ANGLES)
        title = _pick(rng, _TITLES).format(
            hook=_pick(rng, _HOOKS),
            adj=_pick(rng, _ADJECTIVES),
            audience=_title_case(_pick(rng, _AUDIENCES)),
            number=_pick(rng, _NUMBERS),
            w=_title_case(wordings[first]),
        )
        description = _pick(rng, _DESCRIPTIONS).format(
            kind=kind,
            a_kind=_with_article(kind),
            w=wordings[second],
            angle=angle,
            angle_cap=angle[0].upper() + angle[1:],
            audience=_pick(rng, _AUDIENCES),
            short=topic.short,
        )
        kinds.append(kind)
        texts.append(f"{title[0].upper()}{title[1:]} - {description[0].upper()}{description[1:]}")
    return _Catalog(topics, subtheme, members, weights, kinds, texts)


def _typo(word: str, rng: np.random.Generator) -> str:
    """Swap two neighbouring letters, drop one or double one."""
    i = int(rng.integers(1, len(word) - 1))
    match int(rng.integers(3)):
        case 0:
            return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
        case 1:
            return word[:i] + word[i + 1 :]
        case _:
            return word[:i] + word[i] + word[i:]


def _speak(text: str, voice: _Voice, rng: np.random.Generator) -> str:
    """Rewrite a template sentence in the user's own voice, typos included."""
    words = (voice.filler + text).split(" ")
    words = [
        _typo(w, rng) if len(w) >= 4 and w.isalpha() and rng.random() < voice.typo_rate else w
        for w in words
    ]
    out = " ".join(words)
    if out[-1] not in "?.!":
        out += voice.ending
    return out.lower() if voice.lowercase else out[0].upper() + out[1:]


def _user_text(
    templates: tuple[str, ...],
    topic: _Topic,
    sub: int,
    kind: str,
    voice: _Voice,
    rng: np.random.Generator,
) -> str:
    wordings = topic.subthemes[sub % SUBTHEMES_PER_TOPIC]
    text = _pick(rng, templates).format(
        w=_pick(rng, wordings),
        kind=kind,
        a_kind=_with_article(kind),
        short=topic.short,
        praise=voice.praise,
        pan=voice.pan,
    )
    return _speak(text, voice, rng)


@dataclass
class _Rows:
    """The generated rows, column by column."""

    users: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    text_users: list[int] = field(default_factory=list)
    text_timestamps: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    text_items: list[int] = field(default_factory=list)

    def add_text(self, user: int, when: int, text: str, item: int) -> None:
        self.text_users.append(user)
        self.text_timestamps.append(when)
        self.texts.append(text)
        self.text_items.append(item)


@dataclass(frozen=True)
class _User:
    """A user's hidden tastes: topics, how their weights drift, preferred sub-themes, voice."""

    topics: IntArray  # topic per slot
    early: FloatArray  # topic-slot weights at the start of the timeline
    late: FloatArray  # ... and at the end (when drift = 1)
    sub_pref: FloatArray  # (slot, sub-theme within the topic) weights
    voice: _Voice


def _make_user(config: DemoConfig, topic_p: FloatArray, rng: np.random.Generator) -> _User:
    k = int(rng.integers(config.min_user_topics, config.max_user_topics + 1))
    early, late = np.zeros(k), np.zeros(k)
    early[:-1] = rng.dirichlet(np.ones(k - 1))  # the last topic only comes up later,
    late[1:] = rng.dirichlet(np.ones(k - 1))  # the first one fades out
    return _User(
        topics=rng.choice(len(topic_p), size=k, replace=False, p=topic_p),
        early=early,
        late=late,
        sub_pref=rng.dirichlet(np.full(SUBTHEMES_PER_TOPIC, config.subtheme_concentration), k),
        voice=_Voice(
            lowercase=bool(rng.random() < 0.4),
            filler=_pick(rng, _FILLERS),
            ending=_pick(rng, _ENDINGS),
            praise=_pick(rng, _PRAISE),
            pan=_pick(rng, _PANS),
            typo_rate=config.typo_rate * float(rng.uniform(0.0, 2.0)),
        ),
    )


def _sample(weights: FloatArray, rng: np.random.Generator) -> int:
    """An index drawn with probability proportional to ``weights`` (faster than rng.choice)."""
    cumulative = np.cumsum(weights)
    return min(
        int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")),
        len(weights) - 1,
    )


def _draw(
    catalog: _Catalog, sub: int, consumed: npt.NDArray[np.bool_], rng: np.random.Generator
) -> int:
    """An unseen item of the sub-theme, popular ones first; -1 when the user has seen them all."""
    items = catalog.members[sub]
    weights = np.where(consumed[items], 0.0, catalog.weights[sub])
    return int(items[_sample(weights, rng)]) if weights.any() else -1


def _review_templates(rating: float) -> tuple[str, ...]:
    if np.isnan(rating):
        return _COMMENTS
    return _REVIEWS_GOOD if rating >= 4 else _REVIEWS_MIXED if rating == 3 else _REVIEWS_BAD


def _simulate_user(
    user: int,
    config: DemoConfig,
    catalog: _Catalog,
    taste: _User,
    rng: np.random.Generator,
    rows: _Rows,
) -> None:
    """Append one user's timeline, reviews and search queries to ``rows``."""
    n = int(rng.integers(config.min_interactions, config.max_interactions + 1))
    consumed = np.zeros(len(catalog.subtheme), dtype=bool)
    t = config.start_time + int(rng.integers(_START_SPAN_S))
    interest: list[tuple[int, int]] = []  # per step: the (topic slot, sub-theme) it came from
    stamps: list[int] = []
    for step in range(n):
        item, slot, sub = -1, 0, 0
        if interest and rng.random() < config.stickiness:
            slot, sub = interest[-1]
            item = _draw(catalog, sub, consumed, rng)
        share = config.drift * step / max(n - 1, 1)
        for _ in range(10):  # a fresh sub-theme from the drifting mix, until one has unseen items
            if item >= 0:
                break
            slot = _sample((1.0 - share) * taste.early + share * taste.late, rng)
            within = _sample(taste.sub_pref[slot], rng)
            sub = int(taste.topics[slot]) * SUBTHEMES_PER_TOPIC + within
            item = _draw(catalog, sub, consumed, rng)
        noise = item < 0 or rng.random() < config.offtopic_rate
        if noise:
            item = int(rng.choice(np.flatnonzero(~consumed)))
        consumed[item] = True
        if step:
            median_gap = _SESSION_GAP_S if sub == interest[-1][1] else _BREAK_GAP_S
            t += max(60, int(median_gap * rng.lognormal(0.0, 1.0)))
        interest.append((slot, sub))
        stamps.append(t)
        liking = 2.5 if noise else 3.2 + 1.6 * taste.sub_pref[slot, sub % SUBTHEMES_PER_TOPIC]
        rating = min(5.0, max(1.0, round(float(rng.normal(liking, 0.9)))))
        if rng.random() < config.unrated_rate:
            rating = float("nan")
        rows.users.append(user)
        rows.items.append(item)
        rows.timestamps.append(t)
        rows.values.append(rating)
        if rng.random() < config.review_rate:
            own = int(catalog.subtheme[item])
            topic = catalog.topics[own // SUBTHEMES_PER_TOPIC]
            kind = catalog.kinds[item]
            text = _user_text(_review_templates(rating), topic, own, kind, taste.voice, rng)
            rows.add_text(user, t + int(rng.integers(60, _MAX_REVIEW_DELAY_S)), text, item)
    num_queries = min(int(rng.integers(config.min_queries, config.max_queries + 1)), n - 1)
    for step in np.sort(rng.choice(np.arange(1, n), size=num_queries, replace=False)):
        sub = interest[step][1]  # searched for just before the interaction it led to
        topic = catalog.topics[sub // SUBTHEMES_PER_TOPIC]
        text = _user_text(_QUERIES, topic, sub, _pick(rng, _KINDS), taste.voice, rng)
        rows.add_text(
            user, stamps[step] - int(rng.integers(1, stamps[step] - stamps[step - 1])), text, -1
        )


def generate_demo(config: DemoConfig = DemoConfig()) -> Dataset:
    """The demo data set for ``config``; the same config always gives identical data."""
    rng = np.random.default_rng(config.seed)
    catalog = _make_catalog(config, rng)
    ranks = 1.0 + rng.permutation(config.num_topics).astype(np.float64)
    topic_p = ranks**-config.topic_popularity_skew
    topic_p /= topic_p.sum()
    rows = _Rows()
    for user in range(config.num_users):
        _simulate_user(user, config, catalog, _make_user(config, topic_p, rng), rng, rows)
    text_users = np.array(rows.text_users, dtype=np.int64)
    text_times = np.array(rows.text_timestamps, dtype=np.int64)
    order = np.lexsort((text_times, text_users))
    width_i, width_u = len(str(config.num_items)), len(str(config.num_users))
    return Dataset(
        name="demo",
        item_ids=[f"i{j + 1:0{width_i}d}" for j in range(config.num_items)],
        item_texts=catalog.texts,
        item_fields=[
            {"topic": catalog.topics[s // SUBTHEMES_PER_TOPIC].name, "kind": kind}
            for s, kind in zip(catalog.subtheme, catalog.kinds, strict=True)
        ],
        user_ids=[f"u{u + 1:0{width_u}d}" for u in range(config.num_users)],
        interactions=Interactions(
            np.array(rows.users, dtype=np.int64),
            np.array(rows.items, dtype=np.int64),
            np.array(rows.timestamps, dtype=np.int64),
            np.array(rows.values, dtype=np.float64),
        ),
        texts=UserTexts(
            text_users[order],
            text_times[order],
            [rows.texts[i] for i in order],
            np.array(rows.text_items, dtype=np.int64)[order],
        ),
    )

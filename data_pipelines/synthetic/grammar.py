"""The offline story grammar: short, simple, coherent stories with no model and no network.

Design
- A story is a plot (lost toy, sharing, something breaks, helping a creature, a trip, reaching
  for the sky, learning to do something) chosen to fit the sampled noun's kind; a plot is a
  handful of beats (setup, trouble, resolution, ending), each a list of alternative templates.
  Features switch beats on or swap them: `conflict` swaps the trouble for a quarrel, `plot twist`
  swaps the resolution for a surprising one, `bad ending` picks the sad resolution,
  `foreshadowing` plants the plot's hint in the first paragraph (the trouble pays it off),
  `moral value` adds the plot's lesson, `dialogue` adds quoted lines (stories without it have no
  quotes at all, so a model trained on them can learn the feature).
- Templates use `[a|b|c]` for a random choice (nestable, `[a|]` = optional) and `{slot}` for
  cast, word and pronoun slots. The combinatorics (names x openings x plots x choices) keep the
  distinct 4-gram ratio high; see benchmarks/bench_synth.py for the comparison with real stories.
- Invariants: the sampled noun, verb and adjective appear in the text in a form the
  required-word gate accepts; with a fixed `random.Random` the output is deterministic.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .vocab import FAMILY, FEMALE_PEOPLE, Word, past, plural

FEATURES = ("dialogue", "bad ending", "moral value", "plot twist", "foreshadowing", "conflict")

GIRL_NAMES = (
    "Lily Mia Sue Amy Lucy Ella Anna Sara Emma Zoe Kim Ava Rose Ruby Daisy Molly Jane Jenny Lola Nina "
    "Ivy Maya Tina Lisa Kate Beth Jill Meg Pam Dot Luna Hana Rosa Nora Lila Millie Poppy Tess Amber Gina"
).split()
BOY_NAMES = (
    "Tim Tom Ben Sam Max Jack Leo Joe Jake Sid Ted Bob Dan Finn Luke Noah Owen Ryan Eli Kai "
    "Hugo Milo Otto Rex Rudy Toby Zack Alex Billy Jimmy Timmy Danny Pete Mark Nick Ollie Oscar Theo Gus Ned"
).split()
PET_NAMES = "Pip Bubbles Spot Fluffy Buddy Coco Sunny Patch Button Pebble Biscuit Whiskers Nibbles Sparky".split()
NAMES = GIRL_NAMES + BOY_NAMES + PET_NAMES

HERO_ANIMALS = "bunny puppy kitten bear duck mouse fox bird frog pig squirrel lamb owl turtle".split()
CRITTERS = "dog cat bird squirrel puppy rabbit crow monkey goat".split()
PLACES = (
    "the park", "the garden", "the yard", "the beach", "the playground", "the farm", "the woods",
    "the field", "the lake", "the hill",
)
SKY = frozenset("sun moon star sky cloud rainbow sunset sunrise planet".split())
DRINKS = frozenset("milk juice water tea cocoa lemonade soup smoothie".split())
EDIBLE_STUFF = frozenset(
    "honey jam jelly rice bread cheese butter sugar salt chocolate popcorn cereal yogurt gum pasta "
    "oatmeal syrup cream food".split()
)

_CHOICE = re.compile(r"\[([^\[\]]*)\]")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([\"“]?)([a-z])")
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])(?!uni|use|one|eu)")


def expand(template: str, slots: dict[str, str], rng: random.Random) -> str:
    """Resolve `[a|b]` choices innermost-first, then fill `{slot}`s."""
    while True:
        m = _CHOICE.search(template)
        if m is None:
            break
        template = template[: m.start()] + rng.choice(m.group(1).split("|")) + template[m.end() :]
    return template.format_map(slots)


def tidy(text: str) -> str:
    """Capitalise sentence starts, fix a/an, collapse spaces; paragraphs stay separate."""
    paras = []
    for p in text.split("\n\n"):
        p = re.sub(r"[ \t]+", " ", p).strip()
        p = re.sub(r" ([,.!?])", r"\1", p)
        p = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2) + m.group(3).upper(), p)
        p = _ARTICLE.sub(lambda m: m.group(1) + "n ", p)
        if p:
            paras.append(p)
    return "\n\n".join(paras)


# ---------------------------------------------------------------------------------------------
# Plots. Keys: setup / trouble / conflict (replaces trouble) / good / bad / twist_good /
# twist_bad / moral / hint (foreshadowing, payoff in trouble) / talk_* (dialogue) / summary_*.
# Each value is a list of alternative templates.
# ---------------------------------------------------------------------------------------------

PLOTS: dict[str, dict[str, list[str]]] = {
    "lost": {
        "hint": [
            "{His} mom always told {him} to keep {his} things close, but {name} did not [always|] listen.",
            "{Name} [often|always] left {his} things [on the ground|everywhere|in the grass].",
        ],
        "setup": [
            "{Name} had {a_noun}. It was {his} [favorite toy|best toy|most special thing], and {he} took it [everywhere|with {him} every day].",
            "[For {his} birthday,|One morning,] {name} got {a_noun} from {his} [grandma|grandpa|mom|dad]. {He} [loved it very much|held it close all day].",
        ],
        "trouble": [
            "One day, {name} took {the_noun} to {place}. {He} played with it [all day|for a long time|until the sun went down]. When it was time to go home, {he} looked for {the_noun}, but it was gone!",
            "One [sunny|windy|cold] day, {name} went to {place} with {the_noun}. {He} put it down to {vp} [for a while|for a little bit]. When {he} came back, {the_noun} was not there!",
        ],
        "conflict": [
            "One day, {name} took {the_noun} to {place} and played with {fname}. Later, {the_noun} was gone. {Name} thought {fname} took it. \"[Give it back!|You took my {noun}!]\" {he} said. \"I did not take it!\" {fname} said. They were both [angry|mad] and stopped talking.",
        ],
        "conflict_quiet": [
            "One day, {name} took {the_noun} to {place} and played with {fname}. Later, {the_noun} was gone. {Name} thought {fname} took it, and {he} told {fhim} so. {Fname} said {fhe} did not take it. They were both [angry|mad] and stopped talking.",
        ],
        "good": [
            "{Name} [looked|searched] [under the bushes|behind the trees|by the swings], and {mom} helped {him}. At last, {name} found {the_noun} [under a bush|behind a big rock|in the sand|next to a tree]! {He} [hugged it tight|was so happy|jumped for joy].",
            "[They|{Name} and {mom}] looked [everywhere|high and low]. Then {name} saw something [shiny|small] [in the grass|under a bench]. It was {the_noun}! {He} was so [happy|glad].",
        ],
        "bad": [
            "{Name} and {mom} looked and looked, but they could not find {the_noun}. It was getting dark, so they had to go home [without it|with empty hands]. {Name} was very sad [and cried that night|and did not want to play].",
            "{Name} looked [everywhere|all day], but {the_noun} was gone. {He} never saw it again. {He} went to bed [sad|with a heavy heart].",
        ],
        "twist_good": [
            "Then {name} saw something [funny|strange]. A little {critter} was running away with {the_noun}! {Name} followed the {critter} to its [home|nest|bed] and found {the_noun} there, with many other lost things. The {critter} just wanted to play.",
        ],
        "twist_bad": [
            "Then {name} saw something [funny|strange]. A little {critter} was running away with {the_noun}! {Name} ran after it, but the {critter} was too fast. {He} never saw {the_noun} again.",
        ],
        "end_good": [
            "From that day on, {name} [always|] kept {the_noun} close. And {he} still loved to {vp} every day.",
            "After that, {name} took good care of {the_noun}. [{He} was a happy {kind} again.|Then {he} went home to {vp}.]",
        ],
        "end_bad": [
            "Now {name} [still|sometimes] thinks about {the_noun} when {he} goes to {vp}.",
            "{Name} did not feel like playing. {He} just wanted {the_noun} back.",
        ],
        "resolve_conflict": [
            "{Name} said sorry to {fname}.",
            "{Name} felt bad for blaming {fname}, so {he} said sorry.",
        ],
        "moral": [
            "{Name} learned to take good care of {his} things.",
            "{Name} learned that it is good to ask for help.",
            "{Name} learned [that day|] not to blame a friend without knowing the truth.",
        ],
        "talk_setup": ["\"I love my {noun}!\" {name} said [with a big smile|happily]."],
        "talk_trouble": ["\"Where is my {noun}?\" {name} cried. \"I can not find it!\""],
        "talk_good": ["\"Here it is!\" {name} shouted. \"Thank you for helping me, {Mom}!\""],
        "talk_bad": ["\"I am sorry,\" {mom} said [softly|and gave {him} a hug]. \"We can look again tomorrow.\""],
        "summary_good": ["{Name} loses {his} {noun} at {place} and finds it again."],
        "summary_bad": ["{Name} loses {his} {noun} at {place} and never finds it."],
    },
    "share": {
        "hint": [
            "{His} mom always said that [sharing makes things better|it is good to share].",
            "{Name} did not like to share [{his} things|with anyone].",
        ],
        "setup": [
            "One day, {name} got {a_noun} [from {his} grandma|at the market|from {his} dad]. It was the best {noun} {he} had ever seen.",
            "One [sunny|warm|quiet] day, {name} found {a_noun} [on the table|in the kitchen|in a basket]. {He} could not wait to {use} it.",
        ],
        "trouble": [
            "Then {fname} came over. {Fhe} saw {the_noun} and wanted {some} too. But {name} did not want to share.",
            "Soon {fname} [came by|came to play]. {Fhe} looked at {the_noun} [with big eyes|and smiled]. {Name} held {the_noun} close. {He} wanted it all for {himself}.",
        ],
        "conflict": [
            "Then {fname} came over and grabbed {the_noun}. \"It is mine!\" {name} shouted. \"I want it too!\" {fname} said. They both pulled and pulled. They were very [angry|cross].",
        ],
        "conflict_quiet": [
            "Then {fname} came over and grabbed {the_noun}. {Name} shouted that it was {his}. {Fname} shouted back that {fhe} wanted it too. They both pulled and pulled. They were very [angry|cross].",
        ],
        "good": [
            "Then {name} had an idea. {He} shared {the_noun} with {fname}. They {used} it together and laughed.",
            "{Name} thought about it. Then {he} gave {fname} [half|a turn|some]. They {used} it together, and it was much more fun.",
        ],
        "bad": [
            "They [pulled|fought] so much that {the_noun} fell [on the ground|in the mud|in the dirt]. Now nobody could {use} it. {Name} and {fname} were both sad.",
            "{Name} would not share, so {fname} went home. {Name} {used} {the_noun} all alone, but it was not fun [at all|anymore].",
        ],
        "twist_good": [
            "Just then, {mom} came in with a big [basket|bag|box]. Inside there was {lots}! There was enough for everyone. {Name} and {fname} laughed and {used} it all together.",
        ],
        "twist_bad": [
            "While they were fighting, a [big|sneaky] {critter} came and [grabbed|took] {the_noun}. It ran away, and now nobody had it. {Name} and {fname} [looked at each other|were both sad].",
        ],
        "end_good": [
            "From that day on, {name} and {fname} were best friends. They liked to {vp} together every day.",
            "After that, {name} always shared. And {he} and {fname} went out to {vp} [together|in the sun].",
        ],
        "end_bad": [
            "{Name} [sat alone|went home] and thought about what [had happened|{he} had done].",
            "That day, nobody wanted to {vp} with {name}.",
        ],
        "resolve_conflict": ["They said sorry to each other."],
        "moral": [
            "{Name} learned that sharing is [caring|better than fighting|more fun than keeping things].",
            "{Name} learned that a friend is worth more than {a_noun}.",
        ],
        "talk_setup": ["\"Wow, {a_noun}!\" {name} said. \"This is [so good|the best]!\""],
        "talk_trouble": ["\"Can I have some?\" {fname} asked. \"No!\" {name} said. \"It is mine.\""],
        "talk_good": ["\"Let us share,\" {name} said. \"Thank you!\" {fname} said with a smile."],
        "talk_bad": ["\"I wish we had shared,\" {name} said [quietly|sadly]."],
        "summary_good": ["{Name} does not want to share {his} {noun}, but then shares it with {fname}."],
        "summary_bad": ["{Name} and {fname} fight over {a_noun}, and nobody gets to enjoy it."],
    },
    "broken": {
        "hint": [
            "{His} dad always told {him} to be careful with {the_noun} because it could break.",
            "{Name} liked to play very [fast|rough], even near the stairs.",
        ],
        "setup": [
            "{Name} had {a_noun}. It was {his} favorite, and {he} played with it every day.",
            "In {his} room, {name} kept {a_noun} on a shelf. {He} loved it more than anything.",
        ],
        "trouble": [
            "One day, {name} was playing with {the_noun} [too fast|near the stairs|on the table]. Oh no! {He} dropped it, and it broke.",
            "One day, {name} wanted to {vp} and took {the_noun} with {him}. [Crash!|Bump!] {The_noun} fell and broke into pieces.",
        ],
        "conflict": [
            "One day, {fname} wanted to hold {the_noun}. \"No, it is mine!\" {name} said. \"Just for a minute!\" {fname} said. They both pulled, and {the_noun} fell and broke.",
        ],
        "conflict_quiet": [
            "One day, {fname} wanted to hold {the_noun}, but {name} said no. They both pulled, and {the_noun} fell and broke.",
        ],
        "good": [
            "{His} dad came [to help|and looked at it]. Together, they fixed {the_noun} with [some glue|some tape|a little care]. It was [almost|] as good as new!",
            "{Name} [asked|went to] {his} grandpa for help. Grandpa fixed {the_noun} [in no time|with his tools]. {Name} hugged him.",
        ],
        "bad": [
            "{Name} tried to fix it, but it was too broken. {He} had to put it away [for good|forever]. {He} was very sad.",
            "Nobody could fix {the_noun}. {Name} [looked at the pieces|sat on the floor] and cried.",
        ],
        "twist_good": [
            "When {his} dad looked at the pieces, he found [a tiny note|a shiny coin|a little key] inside! [Grandma had hidden it there long ago.|Nobody knew it was there.] Then they fixed {the_noun} together, and it was as good as new.",
        ],
        "twist_bad": [
            "Then {name} looked again and saw that it was not {his} {noun} at all. It was {fname}'s! Now {fname} was sad too, and {name} did not know what to say.",
        ],
        "end_good": [
            "From then on, {name} was careful with {the_noun}. {He} still loved to {vp}, but not near the stairs.",
            "Now {name} keeps {the_noun} in a safe place. Then {he} goes out to {vp}.",
        ],
        "end_bad": [
            "After that, {name} did not want to {vp} for a long time.",
            "{Name} missed {the_noun} [very much|every day].",
        ],
        "resolve_conflict": ["{Name} and {fname} said sorry to each other."],
        "moral": [
            "{Name} learned to be careful with {his} things.",
            "{Name} learned that when something breaks, it is good to ask for help.",
        ],
        "talk_setup": ["\"This is the best {noun} in the world,\" {name} said."],
        "talk_trouble": ["\"Oh no!\" {name} cried. \"My {noun} is broken!\""],
        "talk_good": ["\"Don't worry,\" {his} dad said. \"We can fix it together.\""],
        "talk_bad": ["\"I am sorry,\" {name} whispered. \"I should have been careful.\""],
        "summary_good": ["{Name}'s {noun} breaks, and {he} fixes it with help."],
        "summary_bad": ["{Name}'s {noun} breaks, and nobody can fix it."],
    },
    "help": {
        "hint": [
            "{His} grandma often said that a kind heart always finds a friend.",
            "{Name} [had heard|knew] that [strange|surprising] things can happen [in the park|near the woods].",
        ],
        "setup": [
            "One day, {name} was walking [in the park|near the woods|by the lake] when {he} saw {a_noun}.",
            "One [sunny|rainy|windy] morning, {name} went outside and saw {a_noun} [by the gate|under a tree|near the fence].",
        ],
        "trouble": [
            "{The_noun} was stuck [in a bush|behind a fence|in the mud] and could not get out.",
            "{The_noun} was lost and could not find {nhis} way home.",
            "{The_noun} looked very [tired|cold|hungry] and sat all alone.",
        ],
        "conflict": [
            "{The_noun} needed help, but {fname} said, \"Leave {nhim} alone! Let us go play.\" \"No, we have to help!\" {name} said. They argued for a long time.",
        ],
        "conflict_quiet": [
            "{The_noun} needed help, but {fname} wanted to go and play instead. {Name} wanted to help. They argued for a long time.",
        ],
        "good": [
            "{Name} [did not give up|knew what to do]. {He} [helped {nhim}|stayed with {nhim}] until [{nhe} was safe and well|everything was all right]. {The_noun} was so thankful.",
            "{Name} went to get {his} mom, and together they helped {the_noun}. Soon {nhe} was safe and happy.",
        ],
        "bad": [
            "{Name} tried to help, but {he} was too small. {The_noun} [ran off|went away] into the woods, and {name} never saw {nhim} again.",
            "By the time {name} came back with help, {the_noun} was gone. {Name} went home feeling sad.",
        ],
        "twist_good": [
            "Then something [amazing|surprising] happened. {The_noun} started to glow! It was magic! To say thank you, {nhe} gave {name} a [wish|shiny gold coin|little star].",
        ],
        "twist_bad": [
            "But it was a trick! {The_noun} was not in trouble at all. {nHe} grabbed {name}'s [snack|hat|ball] and ran away [laughing|fast].",
        ],
        "end_good": [
            "From that day on, {name} and {the_noun} were best friends. They loved to {vp} together.",
            "Now {the_noun} visits {name} every day, and they {vp} together.",
        ],
        "end_bad": [
            "{Name} went home and did not feel like {ving} that day.",
            "{Name} still thinks about {the_noun} when {he} goes to {vp}.",
        ],
        "resolve_conflict": ["In the end, {fname} helped too."],
        "moral": [
            "{Name} learned that it is good to help others.",
            "{Name} learned that being kind is [important|the best thing].",
        ],
        "talk_setup": ["\"Hello,\" {name} said. \"Are you okay?\""],
        "talk_trouble": ["\"Please help me,\" {the_noun} said [softly|in a small voice]."],
        "talk_good": ["\"Thank you, {Name},\" {the_noun} said. \"You are a good friend.\""],
        "talk_bad": ["\"Come back!\" {name} called, but nobody answered."],
        "summary_good": ["{Name} meets {a_noun} in trouble and helps, and they become friends."],
        "summary_bad": ["{Name} finds {a_noun} in trouble but cannot help."],
    },
    "trip": {
        "hint": [
            "{His} mom told {him} to stay close, because {the_noun} was [big|full of people].",
            "That morning, there were dark clouds far away, but {name} did not see them.",
        ],
        "setup": [
            "One day, {name} and {his} mom went to {a_noun}. {Name} was so excited. {He} wanted to {vp} there.",
            "[On a sunny morning,|One day,] {name} went to {a_noun} with {his} family. {He} [ran ahead|skipped along], ready to {vp}.",
        ],
        "trouble": [
            "But then, dark clouds came, and it started to rain. {Name} got wet and cold.",
            "{Name} saw a butterfly and ran after it. When {he} looked up, {his} mom was gone. {Name} was lost!",
        ],
        "conflict": [
            "At {the_noun}, {name} met {fname}. They both wanted to [play in the same spot|use the same swing|be first]. \"Me first!\" {name} said. \"No, me!\" {fname} said. They began to shout.",
        ],
        "conflict_quiet": [
            "At {the_noun}, {name} met {fname}. They both wanted to [play in the same spot|use the same swing|be first], and they began to shout at each other.",
        ],
        "good": [
            "Then {his} mom [came|found {him}] and gave {him} a big hug. Soon everything was fine again, and {name} was happy.",
            "[After a while|Soon], the sun came out again. {Name} and {his} mom laughed and played until it was time to go home.",
        ],
        "bad": [
            "{Name} was cold and scared. The day at {the_noun} was [ruined|over]. {He} went home and cried.",
            "{Name} had to go home early. {He} did not get to {vp} at all, and {he} was very sad.",
        ],
        "twist_good": [
            "Then something [wonderful|surprising] happened. A big rainbow came out over {the_noun}! It was the most beautiful thing {name} had ever seen.",
        ],
        "twist_bad": [
            "They went home, but then {name} saw that {he} had left {his} [hat|shoe|bag] at {the_noun}. When they went back, it was gone.",
        ],
        "end_good": [
            "It was the best day ever. {Name} wanted to go back to {the_noun} [soon|the next day].",
            "That night, {name} dreamed about {the_noun}, where {he} could {vp} all day.",
        ],
        "end_bad": [
            "{Name} did not want to go to {the_noun} [again|for a long time].",
            "That night, {name} went to bed [early|sad].",
        ],
        "resolve_conflict": ["In the end, they took turns."],
        "moral": [
            "{Name} learned to stay close and listen to {his} mom.",
            "{Name} learned that it is better to take turns than to fight.",
        ],
        "talk_setup": ["\"Look, Mom!\" {name} said. \"I want to {vp}!\""],
        "talk_trouble": ["\"Mom, where are you?\" {name} cried."],
        "talk_good": ["\"Here I am,\" {his} mom said. \"I will always find you.\""],
        "talk_bad": ["\"I want to go home,\" {name} said with tears in {his} eyes."],
        "summary_good": ["{Name} goes to {the_noun}, something goes wrong, and it turns out fine."],
        "summary_bad": ["{Name} goes to {the_noun}, but the day goes wrong."],
    },
    "sky": {
        "hint": [
            "{His} dad always said that some things are only for looking at.",
            "{Name} [liked to climb|always climbed] very high, even when it was not safe.",
        ],
        "setup": [
            "One [evening|day], {name} looked up and saw {a_noun}. {Name} wanted to touch it.",
            "Every day, {name} looked at {a_noun} in the sky. {He} wished {he} could [hold|touch] it.",
        ],
        "trouble": [
            "{He} climbed up a [hill|tree|ladder], but {the_noun} was still far away. {He} [stretched|reached] and reached, but {he} could not touch it.",
        ],
        "conflict": [
            "{Fname} laughed. \"You can never touch {the_noun}!\" {fhe} said. \"Yes, I can!\" {name} said. They argued, and {name} climbed a tree to show {fhim}.",
        ],
        "conflict_quiet": [
            "{Fname} laughed and said {name} could never touch {the_noun}. {Name} was cross, and {he} climbed a tree to show {fhim}.",
        ],
        "good": [
            "Then {his} dad [came|had an idea]. He helped {name} make a {noun} out of paper. {Name} put it on {his} wall, and now {he} could touch it any time.",
        ],
        "bad": [
            "{Name} reached too far and fell down. {He} hurt {his} knee. {The_noun} was still far away, and {name} cried.",
        ],
        "twist_good": [
            "Then {name} looked down at the pond. There was {the_noun}, right in the water! {Name} touched the water, and {the_noun} wiggled. {He} laughed and laughed.",
        ],
        "twist_bad": [
            "Then {name} saw {the_noun} in the pond and jumped in to get it. But it was only [a picture in the water|a shadow], and {name} got all wet.",
        ],
        "end_good": [
            "That night, {name} smiled at {the_noun} before {he} went to sleep. Tomorrow {he} would {vp} again.",
        ],
        "end_bad": [
            "{Name} went home, wet and sad. {He} did not look at {the_noun} that night.",
        ],
        "resolve_conflict": ["Later, {fname} said sorry for laughing."],
        "moral": [
            "{Name} learned that some things are [best|only] for looking at.",
            "{Name} learned to be careful and not climb too high.",
        ],
        "talk_setup": ["\"I will touch {the_noun} one day,\" {name} said."],
        "talk_trouble": ["\"It is too far!\" {name} said."],
        "talk_good": ["\"Now you can touch {the_noun} every day,\" Dad said with a smile."],
        "talk_bad": ["\"Ouch!\" {name} cried. \"I want my mom!\""],
        "summary_good": ["{Name} wants to touch {the_noun} and finds a clever way."],
        "summary_bad": ["{Name} tries to touch {the_noun} and gets hurt."],
    },
    "try": {
        "hint": [
            "{His} dad always said that practice makes things easier.",
            "{Name} was the smallest of all {his} friends.",
        ],
        "setup": [
            "{Scene} {Name} wanted to {vp} like the big kids. But it was hard. {He} tried, but {he} could not do it.",
            "{Scene} That day, {name} wanted to {vp} all by {himself}. {He} tried once, but {he} [fell down|got it wrong|was too small].",
        ],
        "trouble": [
            "{He} tried again and again. It was still too hard. {Name} sat down and felt like giving up.",
        ],
        "conflict": [
            "Then {fname} came. \"You can not {verb}!\" {fhe} laughed. \"Yes, I can!\" {name} said. {He} was [cross|angry], and they argued.",
        ],
        "conflict_quiet": [
            "Then {fname} came and laughed. {Fhe} said {name} could never {verb}. {Name} was [cross|angry], and they argued.",
        ],
        "good": [
            "But {name} did not give up. {He} practiced every day. At last, {he} could {vp}! {He} felt so proud.",
            "{His} mom showed {him} how to do it, one step at a time. Soon {name} could {vp} very well.",
        ],
        "bad": [
            "{Name} tried one more time, but {he} fell and hurt {his} knee. {He} never tried again, and {he} was sad.",
            "In the end, {name} gave up and went home. {He} still could not {vp}.",
        ],
        "twist_good": [
            "Then {his} grandpa came and smiled. It turned out that grandpa could not {vp} when he was little, too! He showed {name} a secret trick, and soon {name} could do it.",
        ],
        "twist_bad": [
            "At last {name} could {vp}! But when {he} turned around to show {his} friends, everyone had gone home. Nobody saw it.",
        ],
        "end_good": [
            "Now {name} loves to {vp} every day, and {he} helps the little ones learn too.",
        ],
        "end_bad": ["{Name} walked home [slowly|alone]."],
        "resolve_conflict": ["Later, {fname} said sorry for laughing."],
        "moral": [
            "{Name} learned to never give up.",
            "{Name} learned that practice helps you do hard things.",
        ],
        "talk_setup": ["\"I want to {vp}!\" {name} said."],
        "talk_trouble": ["\"It is too hard,\" {name} said sadly."],
        "talk_good": ["\"I did it!\" {name} shouted. \"Look at me!\""],
        "talk_bad": ["\"I will never do it,\" {name} said with a sigh."],
        "summary_good": ["{Name} wants to {verb}, finds it hard, and learns to do it."],
        "summary_bad": ["{Name} wants to {verb} but cannot learn it."],
    },
}

# Which plots fit a noun kind.
PLOTS_FOR_KIND: dict[str, tuple[str, ...]] = {
    "thing": ("lost", "share", "broken", "try"),
    "vehicle": ("lost", "broken", "share"),  # said as "a toy bus"
    "food": ("share", "share", "try"),
    "stuff": ("share", "try"),
    "person": ("help", "help", "try"),
    "animal": ("help", "help", "try"),
    "place": ("trip", "trip", "try"),
    "nature": ("trip", "try"),
    "sky": ("sky", "try"),
    "time": ("try",),
}

OPENINGS = (
    "Once upon a time, there was a {hero_desc} named {name}.",
    "Once upon a time, in a [small|quiet|sunny|little] [town|village|house by the sea|house near the woods], there lived a {hero_desc} named {name}.",
    "There was once a {hero_desc} called {name}.",
    "{Name} was a {hero_desc} who lived [in a small town|near a big forest|on a farm|by the sea|in a little blue house].",
    "In a [little|cozy|yellow] house [on a hill|by a river|at the end of the street], there lived a {hero_desc}. [Its|{His}] name was {name}.",
)
TRAITS = (
    "{He} loved to {vp}.",
    "{Name} liked to {vp} more than anything.",
    "Every day, {name} would {vp}.",
    "{Name}'s favorite thing was to {vp}.",
    "More than anything, {name} loved to {vp}.",
)
OTHER_VERB = (
    "But {name} did not like to {real_verb}.",
    "{Name} did not want to {real_verb}, [not ever|not even a little|not one bit].",
    "[Sometimes|Once in a while], {name} had to {real_verb}, and {he} did not like it.",
)
ENDINGS_GOOD = ("", "", "And they all lived happily ever after.", "It was a [good|happy|great] day.", "The end.")
ENDINGS_BAD = ("", "", "The end.", "It was a sad day for {name}.")


@dataclass(frozen=True)
class Story:
    text: str
    summary: str
    plot: str


def _pronouns(prefix: str, he: str) -> dict[str, str]:
    """{he} {He} {him} {his} {His} for the hero; {fhe} {Fhe} {fHe} ... for prefix "f"."""
    him, his = {"he": ("him", "his"), "she": ("her", "her"), "it": ("it", "its")}[he]
    out: dict[str, str] = {}
    for w, v in (("he", he), ("him", him), ("his", his)):
        out[prefix + w] = v
        out[prefix + w.capitalize()] = v.capitalize()
        if prefix:
            out[prefix.upper() + w] = v.capitalize()
    return out


HOBBIES = (
    Word("play", "with", "outside"), Word("draw", "with", "pictures"), Word("sing", "with", "songs"),
    Word("play", "with", "with {his} ball"), Word("build", "with", "towers"), Word("ride", "with", "{his} bike"),
    Word("dance", "alone"), Word("read", "with", "books"), Word("run", "with", "in the grass"),
)


def _verb_phrase(verb: Word) -> tuple[str, str, str]:
    """(base phrase, past phrase, -ing phrase) e.g. ('kick a ball', 'kicked a ball', ...)."""
    from .vocab import gerund

    obj = f" {verb.obj}" if verb.obj else ""
    return verb.text + obj, past(verb.text) + obj, gerund(verb.text) + obj


def _noun_kind(noun: Word) -> str:
    if noun.kind == "nature" and noun.text in SKY:
        return "sky"
    return noun.kind


def write_story(
    noun: Word, verb: Word, adjective: Word, features: Sequence[str], rng: random.Random
) -> Story:
    """One story that uses the three words and honours the features (see module docstring)."""
    feats = set(features)
    kind = _noun_kind(noun)
    plot_name = rng.choice(PLOTS_FOR_KIND.get(kind, ("try",)))
    if noun.text in FAMILY:  # "his mom was stuck in a bush" reads wrong; family joins a try plot
        plot_name = "try"
    plot = PLOTS[plot_name]
    feeling = adjective.kind == "feeling"
    adj = adjective.text

    # --- cast -----------------------------------------------------------------------------------
    hero_he = rng.choice(("he", "she"))
    if rng.random() < 0.25:
        animal = rng.choice([a for a in HERO_ANIMALS if a != noun.text])
        name, kind_word = rng.choice(PET_NAMES), f"[little|small|young] {animal}"
    else:
        name = rng.choice(BOY_NAMES if hero_he == "he" else GIRL_NAMES)
        kind_word = "[little|young|small] " + ("boy" if hero_he == "he" else "girl")
    f_he = rng.choice(("he", "she"))
    fname = rng.choice([n for n in (BOY_NAMES if f_he == "he" else GIRL_NAMES) if n != name])
    mom_word = "dad" if noun.text in ("mom", "mommy") else "mom"

    # --- the noun -------------------------------------------------------------------------------
    creature = kind in ("person", "animal")
    noun_adj = "" if (feeling and not creature) else f"{adj} "
    if kind == "vehicle":
        bare = f"toy {noun.text}"
    else:
        bare = noun.text
    if creature and noun.text in FAMILY:
        a_noun, the_noun = f"{{his}} {noun_adj}{bare}", f"{{his}} {bare}"
    elif kind == "stuff":
        a_noun, the_noun = f"some {noun_adj}{bare}", f"the {bare}"
    elif kind in ("place", "sky") or plot_name == "trip":
        a_noun, the_noun = f"the {noun_adj}{bare}", f"the {bare}"
    else:
        a_noun, the_noun = f"a {noun_adj}{bare}", f"the {bare}"
    if kind == "person":
        n_he = "she" if noun.text in FEMALE_PEOPLE else "he"
    else:
        n_he = "it"
    if noun.text in DRINKS:
        use, used = "drink", "drank"
    elif kind == "food" or noun.text in EDIBLE_STUFF:
        use, used = "eat", "ate"
    else:
        use, used = "play with", "played with"
    countable = kind != "stuff"

    # an "other" verb (wait, forget) is no hobby: it gets its own sentence and a hobby stands in
    hobby = rng.choice(HOBBIES) if verb.kind == "other" else verb
    vp, vp_past, ving = _verb_phrase(hobby)
    hero_desc = (f"{adj} " if feeling else "") + kind_word
    slots: dict[str, str] = {
        "name": name, "Name": name, "fname": fname, "Fname": fname, "kind": kind_word.split()[-1],
        "mom": f"{{his}} {mom_word}", "Mom": mom_word.capitalize(), "noun": bare, "nouns": plural(bare),
        "adj": adj, "verb": hobby.text, "real_verb": verb.text, "vp": vp, "vp_past": vp_past, "ving": ving,
        "use": use, "used": used, "critter": rng.choice([c for c in CRITTERS if c != noun.text]),
        "place": rng.choice(PLACES), "hero_desc": hero_desc,
        "some": "some" if (use != "play with" or not countable) else "a turn",
        "lots": f"lots of {plural(bare)}" if countable else f"lots more {bare}",
        "himself": {"he": "himself", "she": "herself"}[hero_he],
    }
    slots |= _pronouns("", hero_he) | _pronouns("f", f_he) | _pronouns("n", n_he)

    def fill(t: str) -> str:
        # two passes: slot values may contain {his}-style slots and [a|b] choices
        once = expand(t, slots, rng)
        return expand(once, slots, rng) if ("{" in once or "[" in once) else once

    slots["a_noun"], slots["the_noun"] = fill(a_noun), fill(the_noun)
    slots["The_noun"] = slots["the_noun"][0].upper() + slots["the_noun"][1:]
    slots["hero_desc"] = fill(hero_desc)
    slots["kind"] = slots["hero_desc"].split()[-1]
    scene_t = {
        "time": "It was a {adj_or} {noun}.",
        "sky": "The {noun} was [so|very] {adj_or} that day.",
        "nature": "There was {a_noun} [near {his} house|in the park|by the road].",
        "place": "{Name} was at {a_noun}.",
        "person": "{Name} was with {a_noun}.",
        "animal": "{Name} was playing with {a_noun}.",
    }.get(kind, "{Name} had {a_noun} with {him}.")
    slots["adj_or"] = "" if feeling else adj
    slots["Scene"] = fill(scene_t).replace("  ", " ")

    dialogue = "dialogue" in feats
    bad = "bad ending" in feats
    twist = "plot twist" in feats
    conflict = "conflict" in feats

    def pick(key: str) -> str:
        if not dialogue and f"{key}_quiet" in plot:
            key = f"{key}_quiet"
        return fill(rng.choice(plot[key]))

    # --- paragraph 1: who, what they love, (hint) ---------------------------------------------
    p1 = [fill(rng.choice(OPENINGS)), fill(rng.choice(TRAITS))]
    if verb.kind == "other":
        p1.append(fill(rng.choice(OTHER_VERB)))
    if "foreshadowing" in feats:
        p1.append(pick("hint"))
    # --- paragraph 2: the noun enters ---------------------------------------------------------
    p2 = [pick("setup")]
    if dialogue:
        p2.append(pick("talk_setup"))
    # --- paragraph 3: trouble or conflict -----------------------------------------------------
    p3 = [pick("conflict") if conflict else pick("trouble")]
    if dialogue and not conflict:
        p3.append(pick("talk_trouble"))
    # --- paragraph 4: resolution --------------------------------------------------------------
    outcome = "bad" if bad else "good"
    p4 = [pick(f"twist_{outcome}") if twist else pick(outcome)]
    if conflict and not bad:
        p4.append(pick("resolve_conflict"))
    if dialogue:
        p4.append(pick(f"talk_{outcome}"))
    # --- paragraph 5: ending + moral ----------------------------------------------------------
    p5 = [pick(f"end_{outcome}")]
    if "moral value" in feats:
        p5.append(pick("moral"))
    closing = fill(rng.choice(ENDINGS_BAD if bad else ENDINGS_GOOD))
    if closing:
        p5.append(closing)
    paras = [p1, p2, p3, p4, p5]
    if rng.random() < 0.5:  # 4 paragraphs half the time: setup joins the opening
        paras = [p1 + p2, p3, p4, p5]
    text = tidy("\n\n".join(" ".join(s for s in p if s) for p in paras))
    # the sampled words must appear; the plot usually guarantees it, this is the safety net
    low = text.lower()
    extra = []
    if not re.search(rf"\b{re.escape(adj)}\b", low):
        extra.append(fill("[{Name} felt|{Name} was] {adj} [that day|all day]." if feeling else "{The_noun} was [so|very] {adj}."))
    if not re.search(rf"\b{re.escape(noun.text)}", low):
        extra.append(fill("{Name} thought about {the_noun}."))
    if extra:
        text = tidy(text + " " + " ".join(extra))
    summary = tidy(pick(f"summary_{outcome}"))
    return Story(text=text, summary=summary, plot=plot_name)

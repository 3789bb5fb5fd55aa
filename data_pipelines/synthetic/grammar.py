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
  cast, word and pronoun slots. A leading `@tag` ties templates together: a story draws one
  trouble tag and only uses hints, resolutions and lines with that tag (or none), so rain is
  foreshadowed by dark clouds and ends with the sun, a fall ends with a bandage. The combinatorics (names x openings x plots x choices) keep the
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
            "One [afternoon|morning], {name} and {fname} played with {the_noun} [by the pond|under the big tree|near the sandbox]. They played until the sun was low. On the way home, {name} put {his} hand in {his} pocket. {The_noun} was not there!",
            "That day, it was very windy. {Name} held {the_noun} [tight|close], but a big wind came. When {name} opened {his} eyes, {the_noun} was gone.",
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
            "{Name} thought hard. Where had {he} been that day? {He} went back to every place, one by one. At last, there it was, [in the grass|by the gate|on a bench], just where {he} had left it!",
            "The next day, a kind [old man|lady|girl] knocked on the door. In [his|her] hand was {the_noun}! \"I found this in the park,\" [he|she] said. {Name} said thank you [again and again|many times].",
            "{Name} [looked|searched] [under the bushes|behind the trees|by the swings], and {mom} helped {him}. At last, {name} found {the_noun} [under a bush|behind a big rock|in the sand|next to a tree]! {He} [hugged it tight|was so happy|jumped for joy].",
            "[They|{Name} and {mom}] looked [everywhere|high and low]. Then {name} saw something [shiny|small] [in the grass|under a bench]. It was {the_noun}! {He} was so [happy|glad].",
        ],
        "bad": [
            "Days went by, and {the_noun} did not come back. {Name} put a picture of it on the wall, but it was not the same.",
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
            "That night, {name} went to sleep with {the_noun} right next to {him}.",
            "{Name} said thank you to everyone who helped. Then {he} ran outside to {vp}.",
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
            "[On a warm afternoon|After lunch|One morning], {name}'s grandma gave {him} {a_noun}. \"This is just for you,\" she said.",
            "{Name} and {his} dad went to the shop. There, {name} picked {a_noun}. {He} held it all the way home.",
            "One day, {name} got {a_noun} [from {his} grandma|at the market|from {his} dad]. It was the best {noun} {he} had ever seen.",
            "One [sunny|warm|quiet] day, {name} found {a_noun} [on the table|in the kitchen|in a basket]. {He} could not wait to {use} it.",
        ],
        "trouble": [
            "At the park, {fname} was sitting all alone. {Fhe} had nothing, and {fhe} looked at {the_noun} [with sad eyes|for a long time]. {Name} held it [closer|tight] and looked away.",
            "Then {fname} came over. {Fhe} saw {the_noun} and wanted {some} too. But {name} did not want to share.",
            "Soon {fname} [came by|came to play]. {Fhe} looked at {the_noun} [with big eyes|and smiled]. {Name} held {the_noun} close. {He} wanted it all for {himself}.",
        ],
        "conflict": [
            "Then {fname} came over and grabbed {the_noun}. \"It is mine!\" {name} shouted. \"I want it too!\" {fname} said. They both pulled and pulled. They were very [angry|cross].",
        ],
        "conflict_quiet": [
            "Then {fname} came over and grabbed {the_noun}. {Name} shouted that {the_noun} belonged to {him}. {Fname} shouted back that {fhe} wanted it too. They both pulled and pulled. They were very [angry|cross].",
        ],
        "good": [
            "{Name} remembered how it felt to have nothing. {He} walked over and gave {fname} {some}. {Fname} smiled, and soon they were [laughing|playing] together.",
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
            "[Now|From then on], whenever {name} had something good, {he} shared it with {fname}. And they liked to {vp} together.",
            "It was the best day ever, and it was more fun because they were together.",
            "From that day on, {name} and {fname} were best friends. They liked to {vp} together every day.",
            "After that, {name} always shared. And {he} and {fname} went out to {vp} [together|in the sun].",
        ],
        "end_bad": [
            "The next day, {name} wanted to say sorry, but {fname} did not want to play.",
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
            "One [rainy|busy] day, {name} was running in the house with {the_noun}. {He} [tripped|slipped] on a toy, and {the_noun} hit the floor. Now it was broken.",
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
            "{Name} and {his} mom looked at the pieces. They found all of them and put them back [one by one|with care]. It was not perfect, but {name} loved it even more.",
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
            "On the way to {place}, {name} heard a small sound [behind a tree|in the grass|under a bench]. {He} looked and saw {a_noun}.",
            "[Late one afternoon|After lunch one day], {name} was playing outside when {a_noun} came [walking|running] [slowly|fast] down the road.",
            "One day, {name} was walking [in the park|near the woods|by the lake] when {he} saw {a_noun}.",
            "One [sunny|rainy|windy] morning, {name} went outside and saw {a_noun} [by the gate|under a tree|near the fence].",
        ],
        "trouble": [
            "{The_noun} had hurt {nhis} [leg|foot] and could not walk well.",
            "{The_noun} was [cold|wet] and [shaking|crying] under the rain.",
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
            "{Name} [ran home|went inside] and came back with a [warm blanket|bowl of water|bit of bread]. {He} sat with {the_noun} until {nhe} felt better.",
            "{Name} [did not give up|knew what to do]. {He} [helped {nhim}|stayed with {nhim}] until [{nhe} was safe and well|everything was all right]. {The_noun} was so thankful.",
            "{Name} went to get {his} mom, and together they helped {the_noun}. Soon {nhe} was safe and happy.",
        ],
        "bad": [
            "{Name} wanted to help, but {his} mom called {him} home for dinner. When {he} came back, {the_noun} was gone.",
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
            "After that, {the_noun} came to see {name} [every morning|every day|all the time]. They liked to {vp} [side by side|in the sun].",
            "{Name} [never forgot|always remembered] that day. And {the_noun} never forgot {name}.",
            "That night, {name} told {his} mom all about {the_noun}. She said she was very proud of {him}.",
            "From that day on, {name} and {the_noun} were best friends. They loved to {vp} together.",
            "Now {the_noun} visits {name} every day, and they {vp} together.",
        ],
        "end_bad": [
            "[For many days|Every day after that], {name} looked for {the_noun}, but {nhe} did not come back.",
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
            "@lost {His} mom told {him} to stay close, because {the_noun} was [big|full of people].",
            "@hurt {His} mom told {him} not to run too fast.",
            "@tired {Name} did not want to eat breakfast that morning.",
            "@rain That morning, there were dark clouds far away, but {name} did not see them.",
        ],
        "setup": [
            "One day, {name} and {his} mom went to {a_noun}. {Name} was so excited. {He} wanted to {vp} there.",
            "[On a sunny morning,|One day,] {name} went to {a_noun} with {his} family. {He} [ran ahead|skipped along], ready to {vp}.",
        ],
        "trouble": [
            "@hurt {Name} ran [too fast|ahead] and fell down. {He} hurt {his} knee, and it [hurt a lot|would not stop hurting].",
            "@tired [After a while|Soon], {name} got very [tired|hungry|thirsty]. But the way home was long.",
            "@rain But then, dark clouds came, and it started to rain. {Name} got wet and cold.",
            "@lost {Name} saw a butterfly and ran after it. When {he} looked up, {his} mom was gone. {Name} was lost!",
        ],
        "conflict": [
            "At {the_noun}, {name} met {fname}. They both wanted to [play in the same spot|use the same swing|be first]. \"Me first!\" {name} said. \"No, me!\" {fname} said. They began to shout.",
        ],
        "conflict_quiet": [
            "At {the_noun}, {name} met {fname}. They both wanted to [play in the same spot|use the same swing|be first], and they began to shout at each other.",
        ],
        "good": [
            "@hurt {His} mom cleaned {his} knee and [gave {him} a hug|put a bandage on it], and soon {name} felt much better. They [sat in the shade|had a picnic] and watched the [birds|clouds].",
            "@tired {His} mom gave {him} a snack and some water, and soon {name} felt much better. They [sat in the shade|had a picnic] and watched the [birds|clouds].",
            "@lost Then {his} mom [came|found {him}] and gave {him} a big hug. Soon everything was fine again, and {name} was happy.",
            "@rain [After a while|Soon], the sun came out again. {Name} and {his} mom laughed and played until it was time to go home.",
        ],
        "bad": [
            "The day was not fun anymore. {Name} sat [in the car|on a rock] and waited to go home.",
            "@rain|lost {Name} was cold and scared. The day at {the_noun} was [ruined|over]. {He} went home and cried.",
            "{Name} had to go home early. {He} did not get to {vp} at all, and {he} was very sad.",
        ],
        "twist_good": [
            "@rain Then something [wonderful|surprising] happened. A big rainbow came out over {the_noun}! It was the most beautiful thing {name} had ever seen.",
            "@lost The butterfly came back and sat on {name}'s hand. When {he} followed it again, it led {him} right back to {his} mom!",
            "@hurt|tired Just then, a kind man with a big cart came by. He gave {name} a free treat, and {name} forgot all about being [sad|tired].",
        ],
        "twist_bad": [
            "They went home, but then {name} saw that {he} had left {his} [hat|shoe|bag] at {the_noun}. When they went back, it was gone.",
        ],
        "end_good": [
            "On the way home, {name} fell asleep in the car with a smile on {his} face.",
            "At home, {name} drew a picture of {the_noun} and put it on the wall.",
            "It was the best day ever. {Name} wanted to go back to {the_noun} [soon|the next day].",
            "That night, {name} dreamed about {the_noun}, where {he} could {vp} all day.",
        ],
        "end_bad": [
            "{Name} looked out the window all the way home and did not say a word.",
            "{Name} did not want to go to {the_noun} [again|for a long time].",
            "That night, {name} went to bed [early|sad].",
        ],
        "resolve_conflict": ["In the end, they took turns."],
        "moral": [
            "{Name} learned to stay close and listen to {his} mom.",
            "{Name} learned that it is better to take turns than to fight.",
        ],
        "talk_setup": ["\"Look, Mom!\" {name} said. \"I want to {vp}!\""],
        "talk_trouble": ["@lost \"Mom, where are you?\" {name} cried.",
            "@rain \"Oh no, I am all wet!\" {name} cried.",
            "@hurt \"Ouch! My knee!\" {name} cried.",
            "@tired \"I am so tired, Mom,\" {name} said."],
        "talk_good": ["@lost \"Here I am,\" {his} mom said. \"I will always find you.\"",
            "\"Thank you, Mom,\" {name} said with a smile."],
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
            "{Scene} All of {his} friends could {vp}, but {name} could not. {He} wanted to learn [so much|more than anything].",
            "{Scene} [That morning|One day], {name} saw the big kids {vp}. {He} wanted to {vp} too, but every time {he} tried, something went wrong.",
            "{Scene} {Name} wanted to {vp} like the big kids. But it was hard. {He} tried, but {he} could not do it.",
            "{Scene} That day, {name} wanted to {vp} all by {himself}. {He} tried once, but {he} [fell down|got it wrong|was too small].",
        ],
        "trouble": [
            "Every time {name} tried, it went wrong. {His} [arms|legs] got tired, and {his} face got red. It was much harder than it looked.",
            "{Name} practiced all morning, but {he} still could not {vp}. {He} kicked a little stone and [sighed|frowned].",
            "The more {name} tried, the worse it got. Soon {he} wanted to [stop|go home|cry].",
            "[The first time|At first], {he} [fell over|got it wrong|was too slow]. The second time was not much better. Some of the big kids [laughed|looked at {him}].",
            "{He} tried again and again. It was still too hard. {Name} sat down and felt like giving up.",
        ],
        "conflict": [
            "Then {fname} came. \"You can not {verb}!\" {fhe} laughed. \"Yes, I can!\" {name} said. {He} was [cross|angry], and they argued.",
        ],
        "conflict_quiet": [
            "Then {fname} came and laughed. {Fhe} said {name} could never {verb}. {Name} was [cross|angry], and they argued.",
        ],
        "good": [
            "{Name} watched the big kids [very closely|for a long time]. Then {he} tried to do it just like them, slow and careful. It worked!",
            "{Name} took a deep breath and tried once more. This time, {he} did not stop. {He} could {vp}!",
            "{His} friend {fname} came to help. \"Try it like this,\" {fhe} said. {Name} tried again, and this time {he} did it!",
            "But {name} did not give up. {He} practiced every day. At last, {he} could {vp}! {He} felt so proud.",
            "{His} mom showed {him} how to do it, one step at a time. Soon {name} could {vp} very well.",
        ],
        "bad": [
            "{Name} tried and tried until the sun went down, but it was no use. {He} went home [tired and sad|with {his} head down].",
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
            "After that day, {name} could {vp} [better than ever|all by {himself}]. And every time {he} did, {he} smiled.",
            "The next day, {name} showed everyone how to {vp}. Even the big kids [clapped|cheered].",
            "Now {name} can {vp} [any time|whenever {he} wants], and {he} never forgets how hard it was at first.",
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
    "gift": {
        "hint": [
            "{Name} knew that {his} mom's birthday was [coming soon|in two days|next week].",
            "{His} grandma always said that the best gifts come from the heart.",
        ],
        "setup": [
            "One day, {name} wanted to give {his} mom a [gift|surprise] for her birthday. {He} looked all around the house and found {a_noun}. {He} thought it was [perfect|just right].",
            "[It was almost|Soon it would be] {his} mom's birthday. {Name} wanted to give her something special. At the market, {he} saw {a_noun} and saved {his} coins to get it.",
        ],
        "trouble": [
            "{Name} hid {the_noun} under {his} bed. But the next morning, {the_noun} was all [dusty|dirty|messy]. {Name} did not know what to do.",
            "On the way home, {name} tripped on a rock. {The_noun} fell on the ground and got all dirty.",
        ],
        "conflict": [
            "But {his} [big|little] [brother|sister] wanted to give {the_noun} too. \"I found it first!\" {name} said. \"No, I did!\" {fname} said. They argued and did not talk all day.",
        ],
        "conflict_quiet": [
            "But {fname} wanted to give {the_noun} to Mom too. They argued about who had found it first, and they did not talk all day.",
        ],
        "good": [
            "{Name} cleaned {the_noun} until it [was shiny|looked new] and put a [red|pink|blue] bow on it. When {his} mom saw it, she smiled [a big smile|from ear to ear] and gave {name} a big hug.",
            "{Name} made a little card to go with {the_noun}. {His} mom loved the gift. She said it was the best birthday ever.",
        ],
        "bad": [
            "{Name} tried to clean it, but {the_noun} was [ruined|too dirty]. On {his} mom's birthday, {name} had no gift to give. {He} felt very sad.",
            "When {name} gave {the_noun} to {his} mom, it was all dirty. She said thank you, but {name} knew it was not the gift {he} had wanted.",
        ],
        "twist_good": [
            "Then {his} mom came in and saw everything. She laughed and said that {the_noun} was just what she had wanted! She did not mind the dirt at all.",
        ],
        "twist_bad": [
            "But when {his} mom opened the gift, she laughed. She already had {a_noun} just like it! {Name} [felt silly|did not know what to say].",
        ],
        "end_good": [
            "That night, they sat together and ate cake. Then {name} went out to {vp}, feeling warm inside.",
            "[From then on|After that], {his} mom kept {the_noun} on the table where everyone could see it.",
        ],
        "end_bad": [
            "{Name} put {his} things away and did not talk about it [anymore|for a long time].",
            "That night, {name} lay in bed and thought about how much {he} wanted to {vp}.",
            "{Name} went to {his} room and did not feel like {ving}.",
            "{Name} wished {he} had been more careful.",
        ],
        "resolve_conflict": ["In the end, they gave the gift together."],
        "moral": [
            "{Name} learned that a gift made with love is the best gift of all.",
            "{Name} learned that what matters most is to try [to make others happy|your best].",
        ],
        "talk_setup": ["\"Mom will love it!\" {name} said with a big smile."],
        "talk_trouble": ["\"Oh no! My gift is ruined!\" {name} cried."],
        "talk_good": ["\"Thank you, my sweet {kind},\" {his} mom said. \"I love it!\""],
        "talk_bad": ["\"I am sorry, Mom,\" {name} said quietly."],
        "summary_good": ["{Name} wants to give {his} mom {a_noun} for her birthday, and she loves it."],
        "summary_bad": ["{Name} wants to give {his} mom {a_noun}, but the gift is ruined."],
    },
    "scary": {
        "hint": [
            "{Name} was scared of many things, but most of all {he} was scared of {the_noun}.",
            "[Every night|Sometimes], {name} heard strange sounds [outside|from the woods] and hid under {his} blanket.",
        ],
        "setup": [
            "One [dark|cloudy|windy] evening, {name} saw {a_noun} [outside the window|near the woods|at the end of the road]. {He} [froze|held {his} breath]. {The_noun} looked so big and scary.",
            "One day, {name} had to walk past {a_noun} [to get to school|to go to the shop|on the way home]. {His} legs began to shake.",
        ],
        "trouble": [
            "{Name} wanted to run away, but {his} [ball|hat|kite] was right next to {the_noun}. {He} had to get it back.",
            "{Name} ran home as fast as {he} could and hid under {his} bed. {He} did not want to go outside [again|ever].",
        ],
        "conflict": [
            "{Fname} laughed at {him}. \"You are scared of {the_noun}!\" {fhe} said. \"I am not!\" {name} shouted. They had a big fight.",
        ],
        "conflict_quiet": [
            "{Fname} laughed and said that {name} was scared of {the_noun}. {Name} shouted back, and they had a big fight.",
        ],
        "good": [
            "{His} dad took {his} hand, and they went to look together. Up close, {the_noun} was not scary at all. {Name} smiled and felt [brave|proud].",
            "{Name} took a deep breath and walked closer, one small step at a time. Soon {he} saw that there was nothing to be scared of.",
        ],
        "bad": [
            "{Name} was too scared to go back. {He} stayed inside [all day|all week], and {his} [ball|hat|kite] was lost [in the rain|forever].",
            "{Name} ran so fast that {he} fell and hurt {his} knee. {He} cried all the way home.",
        ],
        "twist_good": [
            "Then {name} looked again and laughed. It was not scary at all! It was only {fname} [playing a game|in a funny hat], hiding behind {the_noun}.",
        ],
        "twist_bad": [
            "When {name} finally looked, {he} saw that it was only a shadow. But by then, everyone had gone home, and {name} was all alone in the dark.",
        ],
        "end_good": [
            "From that day on, {name} was not scared anymore. {He} even liked to {vp} near {the_noun}.",
            "Now {name} is [brave|not scared], and {he} tells the little ones there is nothing to fear.",
        ],
        "end_bad": [
            "{Name} still does not like to go near {the_noun}.",
            "That night, {name} slept with the light on.",
        ],
        "resolve_conflict": ["Later, {fname} said sorry for laughing, and they were friends again."],
        "moral": [
            "{Name} learned that things are often less scary when you look at them closely.",
            "{Name} learned that being brave does not mean you are not scared.",
        ],
        "talk_setup": ["\"What is that?\" {name} whispered."],
        "talk_trouble": ["\"I am so scared,\" {name} said in a small voice."],
        "talk_good": ["\"See? It is not scary at all,\" Dad said. \"You were very brave.\""],
        "talk_bad": ["\"I want to go home!\" {name} cried."],
        "summary_good": ["{Name} is scared of {a_noun} but finds out there is nothing to fear."],
        "summary_bad": ["{Name} is scared of {a_noun} and runs away."],
    },
}

# Which plots fit a noun kind.
PLOTS_FOR_KIND: dict[str, tuple[str, ...]] = {
    "thing": ("lost", "share", "broken", "gift", "lost", "share", "broken", "gift", "try"),
    "vehicle": ("lost", "broken", "share", "gift"),  # said as "a toy bus"
    "food": ("share", "share", "gift", "try"),
    "stuff": ("share", "try"),
    "person": ("help", "help", "scary", "help", "try"),
    "animal": ("help", "help", "scary", "help", "try"),
    "place": ("trip", "trip", "scary", "try"),
    "nature": ("trip", "scary", "try"),
    "sky": ("sky", "sky", "try"),
    "time": ("try",),
}

OPENINGS = (
    "Once upon a time, there was a {hero_desc} named {name}.",
    "Once upon a time, in a [small|quiet|sunny|little] [town|village|house by the sea|house near the woods], there lived a {hero_desc} named {name}.",
    "There was once a {hero_desc} called {name}.",
    "{Name} was a {hero_desc} who lived [in a small town|near a big forest|on a farm|by the sea|in a little blue house].",
    "In a [little|cozy|yellow] house [on a hill|by a river|at the end of the street], there lived a {hero_desc}. {His} name was {name}.",
    "Not long ago, there was a {hero_desc} named {name}.",
    "In a big [city|town], there was a {hero_desc} called {name}.",
    "Once there was a {hero_desc}. {His} name was {name}.",
    "{Name} was a {hero_desc} with [a big smile|bright eyes|a kind heart|a loud laugh].",
)
TRAITS = (
    "{He} loved to {vp}.",
    "{Name} liked to {vp} more than anything.",
    "Every day, {name} would {vp}.",
    "{Name}'s favorite thing was to {vp}.",
    "More than anything, {name} loved to {vp}.",
    "{Name} [really|] liked to {vp}[ every day| after lunch| with {his} friends| in the morning].",
    "When {name} was happy, {he} liked to {vp}.",
    "Nothing made {name} happier than to {vp}.",
)
LIFE = (
    "{He} lived with {his} mom and dad [in a little house|near the park|by a big tree].",
    "{His} best friend was {fname}, who lived [next door|down the street|across the road].",
    "{Name} had a [little|big|fluffy] [dog|cat|bunny] called {pet}.",
    "Every morning, {name} [ate breakfast|had a glass of milk|had warm toast] and [ran outside|looked out the window].",
    "{He} liked the sun, the [flowers|birds|trees], and [playing outside|long walks].",
    "{His} room was full of [toys|books|drawings] and [soft pillows|pictures of animals].",
    "{Name} was [only|just] [three|four|five] years old, but {he} was very [smart|brave|kind].",
    "{His} favorite color was [red|blue|green|yellow|pink|purple].",
    "[In the evening|At night], {his} [mom|dad|grandma] [read {him} a story|sang {him} a song].",
    "{Name} [always|often] helped {his} [mom|dad|grandpa] [in the garden|in the kitchen|with the dishes].",
    "{Name} had a [little|big] [brother|sister] who [liked to follow {him} everywhere|was always laughing].",
    "[On rainy days|When it was cold], {name} liked to sit by the window and watch the [rain|birds|people go by].",
    "{He} had a [red|blue|yellow] [hat|coat|bag] that {he} wore every day.",
    "{Name} knew [every tree|every flower|every house] on {his} street.",
    "Everyone in the [town|village|street] knew {name}, because {he} [always said hello|had a big laugh|was so kind].",
    "At night, {name} liked to look at the stars [from {his} window|before bed].",
)
COLOR = (
    "The sun was [warm|bright|shining], and the birds were singing.",
    "[The sky was blue|There were fluffy clouds in the sky], and a [soft|cool] wind was blowing.",
    "The grass was [green|wet], and the flowers smelled [sweet|nice].",
    "It was a [quiet|busy|happy] day, and [everyone was outside|children were playing everywhere].",
    "[Leaves|Little bugs] [danced|moved] in the wind.",
    "A little bird [sang|chirped] [in a tree|on the fence|nearby].",
    "The air smelled [like rain|of flowers|fresh and clean].",
    "[Far away|Down the road], a dog was barking.",
    "[Big|White|Soft] clouds [moved|floated] [slowly|across the sky] like [sheep|boats].",
    "The [trees|flowers] [moved|danced] [a little|softly] in the [wind|sun].",
    "It was [so quiet|very still] that {name} could hear the [bees|birds|wind].",
    "[Some|A few] [ducks|birds|kids] were [playing|walking] [by the pond|in the street|near the trees].",
    "The day was [warm|cool|bright], and the [sky|grass] was [so|very] [blue|green].",
)
FEEL_TROUBLE = (
    "{Name}'s eyes filled with tears.",
    "{His} heart [beat fast|felt heavy].",
    "{Name} [felt|was] [a little|very|so] [sad|worried|upset].",
    "{He} did not know what to do.",
    "{Name} sat [down|on the ground] and [sighed|put {his} head in {his} hands].",
    "[What could {he} do?|What should {he} do now?]",
)
FEEL_GOOD = (
    "{Name} [smiled|laughed|clapped {his} hands]. {He} felt [warm|happy] inside.",
    "{His} heart was full of joy.",
    "{He} [jumped up and down|danced around] with joy.",
    "Everything was [good|right] again.",
)
FEEL_BAD = (
    "{Name} [sat alone|looked at the ground] for a long time.",
    "Big tears rolled down {his} [face|cheeks].",
    "{His} heart felt heavy.",
    "Nothing felt fun anymore.",
)
OTHER_VERB = (
    "But {name} did not like to {real_verb}.",
    "{Name} did not want to {real_verb}, [not ever|not even a little|not one bit].",
    "[Sometimes|Once in a while], {name} had to {real_verb}, and {he} did not like it.",
)
ENDINGS_GOOD = (
    "", "", "", "And they all lived happily ever after.", "It was a [good|happy|great|wonderful] day.", "The end.",
    "And that is how {name} [learned to smile again|had the best day].",
)
ENDINGS_BAD = ("", "", "The end.", "It was a sad day for {name}.")


# Phrase-level variety applied after the plot is written: each occurrence is swapped at random for
# an equivalent (never when it would touch one of the sampled words). Sentence-initial forms only
# where the swap keeps the sentence whole.
SWAPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (" very ", (" very ", " so ", " really ", " very, very ")),
    ("One day, ", ("One day, ", "One morning, ", "One afternoon, ", "Then one day, ", "One sunny day, ")),
    ("Then ", ("Then ", "Just then, ", "After that, ", "Soon ")),
    (" little ", (" little ", " small ", " tiny ", " little ")),
    (" big ", (" big ", " huge ", " big, big ", " big ")),
    (" was sad", (" was sad", " felt sad", " was very sad", " was so sad")),
    (" was happy", (" was happy", " felt happy", " was so happy", " was full of joy")),
    (" said", (" said", " said", " answered", " replied")),
    (" looked ", (" looked ", " looked ", " searched ")),
    (" together", (" together", " together", " side by side")),
    ("At last, ", ("At last, ", "Finally, ", "In the end, ")),
    (" loved ", (" loved ", " loved ", " liked ", " really loved ")),
    (" every day", (" every day", " all the time", " day after day")),
)
_SAID_OK = re.compile(r'["”],? $')


_SWAP_RE = re.compile("|".join(re.escape(p) for p, _ in sorted(SWAPS, key=lambda x: -len(x[0]))))
_SWAP_OPTIONS = dict(SWAPS)


def vary(text: str, rng: random.Random, keep: set[str]) -> str:
    """Swap stock phrases for equivalents (see SWAPS) in one pass, so swaps never chain;
    phrases containing a word in `keep` (the sampled words) stay."""

    def one(m: re.Match[str]) -> str:
        phrase = m.group(0)
        if phrase.strip().lower() in keep:
            return phrase
        if phrase == " said" and not _SAID_OK.search(text[max(0, m.start() - 2) : m.start()] + " "):
            return phrase  # "answered"/"replied" only right after a quote: '"Hi," answered Tom'
        if phrase == " looked " and not text.startswith(("for ", "everywhere", "under", "behind"), m.end()):
            return phrase
        return rng.choice(_SWAP_OPTIONS[phrase])

    return _SWAP_RE.sub(one, text)


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
        "pet": rng.choice([p for p in PET_NAMES if p != name]),
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

    # "@tag " templates belong together: one trouble tag per story (rain -> the sun comes out)
    tags = sorted({t.split()[0][1:] for t in plot["trouble"] if t.startswith("@")})
    tag = rng.choice(tags) if tags else ""

    def fits(t: str) -> bool:
        return not t.startswith("@") or tag in t.split()[0][1:].split("|")

    def pick(key: str) -> str:
        if not dialogue and f"{key}_quiet" in plot:
            key = f"{key}_quiet"
        options = [t for t in plot[key] if fits(t)] or plot[key]
        if not dialogue:  # quoted speech only in dialogue stories
            options = [t for t in options if '"' not in t] or options
        t = rng.choice(options)
        return fill(t.split(" ", 1)[1] if t.startswith("@") else t)

    # --- paragraph 1: who, what they love, (hint) ---------------------------------------------
    def maybe(pool: tuple[str, ...], p: float) -> list[str]:
        return [fill(rng.choice(pool))] if rng.random() < p else []

    p1 = [fill(rng.choice(OPENINGS)), fill(rng.choice(TRAITS)), *maybe(LIFE, 0.8), *maybe(LIFE, 0.3)]
    if len(p1) == 4 and p1[2] == p1[3]:
        p1.pop()
    if verb.kind == "other":
        p1.append(fill(rng.choice(OTHER_VERB)))
    if "foreshadowing" in feats:
        p1.append(pick("hint"))
    # --- paragraph 2: the noun enters ---------------------------------------------------------
    p2 = [pick("setup"), *maybe(COLOR, 0.5)]
    if dialogue:
        p2.append(pick("talk_setup"))
    # --- paragraph 3: trouble or conflict -----------------------------------------------------
    p3 = [pick("conflict") if conflict else pick("trouble"), *maybe(FEEL_TROUBLE, 0.6)]
    if dialogue and not conflict:
        p3.append(pick("talk_trouble"))
    # --- paragraph 4: resolution --------------------------------------------------------------
    outcome = "bad" if bad else "good"
    p4 = [pick(f"twist_{outcome}") if twist else pick(outcome), *maybe(FEEL_BAD if bad else FEEL_GOOD, 0.6)]
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
    keep = {noun.text, verb.text, adj, *verb.obj.split()}
    text = tidy(vary("\n\n".join(" ".join(s for s in p if s) for p in paras), rng, keep))
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

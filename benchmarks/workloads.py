"""The classifier workload (see DESIGN.md): a long fixed system prompt listing labels and rules, short
user turns in English and Vietnamese, greedy decoding, about 50 output tokens. Written for tokenyard."""

from __future__ import annotations

import random

CLASSIFIER_SYSTEM_PROMPT = """\
You label replies in a chat app where young children practise English with a friendly tutor. Each turn
gives you the tutor's question, the expected answer, and the child's reply. Label the child's reply.
You never talk to the child.

Output exactly one line of JSON and nothing else:
{"emotion": "<label>", "learn_score": <true or false>}

Emotion labels (exactly one, lowercase):
- happy: glad, excited, playful or thankful.
- proud: celebrates their own success ("I did it!").
- sad: unhappy, lonely or disappointed.
- angry: cross, rude, or says something is unfair.
- scared: fear, worry, monsters, the dark.
- surprised: reacts to something unexpected ("wow", "really?").
- bored: wants to stop, or answers with minimal effort.
- confused: does not understand, or says "I don't know".
- tired: sleepy, hungry or worn out.
- neutral: none of the above is clearly present.

Rules for the emotion:
1. Judge the child's reply only, not the question.
2. Emojis, punctuation and repeated letters count ("yesss!!!" is happy; "ok." is neutral).
3. If two labels fit, prefer the stronger feeling; if unsure, use neutral.
4. Replies may be in English, Vietnamese, or a mix: label the feeling in any language.

Rules for learn_score:
5. true only when the reply is a correct English answer: the expected word, a correct synonym,
   or a correct sentence that contains it ("I think it is a cat" for "cat").
6. Small spelling mistakes are fine ("aple" for "apple").
7. A reply in Vietnamese, an empty reply, a question back, or a wrong answer gives false.
8. If the tutor asked for an opinion or a feeling, any sensible English answer is true.

Never explain. Never add keys. Never wrap the JSON in code fences. Never use a label that is not listed.
"""

_QUESTIONS = [
    ("What color is the sky?", "blue"),
    ("How many legs does a cat have?", "four"),
    ("What do you call a baby dog?", "puppy"),
    ("Can you say 'apple'?", "apple"),
    ("What is the opposite of hot?", "cold"),
    ("Which animal says 'moo'?", "cow"),
    ("What do we drink when we are thirsty?", "water"),
    ("How do you feel today?", "any feeling"),
    ("What is 3 plus 2?", "five"),
    ("Con mèo tiếng Anh là gì?", "cat"),
    ("What fruit is yellow and long?", "banana"),
    ("Where do fish live?", "in water"),
]
_REPLIES = [
    "Blue!!! I love the sky so much",
    "three? no wait, four!",
    "I don't know what that means",
    "Aple! I did it, I did it!",
    "this is boring, can we play a game instead",
    "Con không biết đâu, khó quá",
    "a cow says moo moo hahaha",
    "I'm scared of the dark at night",
    "Wow really? fish live in the water?",
    "No. I don't want to answer.",
    "I think it is a puppy, my puppy is called Bun",
    "Mình thấy vui lắm hôm nay, cảm ơn cô",
    "five because three and two make five",
    "I am sleepy and hungry",
    "cold, like ice cream",
    "banana is my favourite fruit in the whole world",
]


def classifier_user_turns(count: int, seed: int = 0) -> list[str]:
    """Distinct user turns of roughly 20-60 tokens: question, expected answer, the child's reply."""
    rng = random.Random(seed)
    turns = []
    for index in range(count):
        question, expected = rng.choice(_QUESTIONS)
        reply = rng.choice(_REPLIES)
        turns.append(f"Tutor question: {question}\nExpected answer: {expected}\nChild's reply: {reply} (#{index})")
    return turns


def classifier_conversations(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    return [
        [{"role": "system", "content": CLASSIFIER_SYSTEM_PROMPT}, {"role": "user", "content": turn}]
        for turn in classifier_user_turns(count, seed)
    ]

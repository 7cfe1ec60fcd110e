"""Offline arena generator: seeded worlds (the built-in airline, clinic and retail tools over freshly generated
data) and question templates of all four scenario types, with gold calls and answers computed from the
world. No LLM: it is the embedded default behind `astra-gym demo`, the tests and RL smoke runs.

Each arena carries its own small world (its initial SQLite rows); the tools' code is the built-in world's,
so what a write does (a booking, a refill, an order, a return) is what later lookups in the episode see.
Gold answers are computed here in Python and checked by `astra-gym arenas validate` in the sandbox.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gym_server.builtin import load_world
from gym_server.models import Arena, Provenance, ScenarioType

SCENARIOS = [s.value for s in ScenarioType]


class Unfit(Exception):
    """The sampled world cannot host this template; sample another."""


@dataclass
class Draft:
    question: str
    final_answer: Any
    subtasks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, question: str, tool: str, arguments: dict[str, Any], answer: Any, depends_on: list[str] | None = None) -> str:
        sid = f"s{len(self.subtasks) + 1}"
        self.subtasks.append({"id": sid, "question": question, "answer": answer, "depends_on": depends_on or [],
                              "gold_call": {"tool": tool, "arguments": arguments}})  # fmt: skip
        return sid


# ---------------------------------------------------------------------------------------------- airline
CITIES = ["SFO", "JFK", "LAX", "SEA", "ATL", "BOS", "ORD", "DEN", "MIA", "AUS"]
AIRLINES = [("AA", "American"), ("UA", "United"), ("DL", "Delta"), ("B6", "JetBlue"), ("AS", "Alaska"), ("WN", "Southwest")]
NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Donald Knuth", "Frances Allen", "Ken Thompson"]


def airline_world(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    routes = rng.sample([(a, b) for a in CITIES for b in CITIES if a != b], 3)
    dates = [f"2026-12-{d:02d}" for d in rng.sample(range(1, 29), 2)]
    flights, used = [], set()
    prices = rng.sample(range(89, 600), 40)
    times = rng.sample([f"{h:02d}:{m:02d}" for h in range(6, 23) for m in (0, 15, 30, 45)], 40)
    for origin, destination in routes:
        date = rng.choice(dates)
        for _ in range(rng.randint(2, 4)):
            code, airline = rng.choice(AIRLINES)
            fid = f"{code}{rng.randint(100, 999)}"
            if fid in used:
                continue
            used.add(fid)
            flights.append({"id": fid, "airline": airline, "origin": origin, "destination": destination, "date": date,
                            "departure": times.pop(), "price": float(prices.pop()), "seats_left": rng.choice([0, 1, 2, 5, 9, 14, 30])})  # fmt: skip
    passengers = [{"id": f"P{i + 1:03d}", "name": n, "miles": rng.randint(0, 90) * 1000} for i, n in enumerate(rng.sample(NAMES, 4))]
    bookings = []
    for i, passenger in enumerate(passengers):
        for flight in rng.sample(flights, rng.randint(0, 2)):
            status = rng.choice(["confirmed", "confirmed", "cancelled"])
            bookings.append({"id": f"{flight['id']}-{len(bookings) + 1:03d}", "flight_id": flight["id"], "passenger_id": passenger["id"], "status": status})
    return {"flights": flights, "passengers": passengers, "bookings": bookings}


def _cheapest(world: dict[str, Any], origin: str, destination: str, date: str) -> dict[str, Any] | None:
    options = [f for f in world["flights"] if (f["origin"], f["destination"], f["date"]) == (origin, destination, date) and f["seats_left"] > 0]
    return min(options, key=lambda f: (f["price"], f["departure"])) if options else None


FLIGHT_FACTS = [("seats_left", "How many seats are left on flight {id}?"), ("airline", "Which airline operates flight {id}?"),
                ("departure", "At what time does flight {id} depart?"), ("price", "What does a seat on flight {id} cost?")]  # fmt: skip


def airline_single(world: dict[str, Any], rng: random.Random, n: int = 1) -> Draft:
    flights = rng.sample(world["flights"], n)
    draft = Draft("", None)
    answers = []
    for flight in flights:
        key, text = rng.choice(FLIGHT_FACTS)
        draft.add(text.format(**flight), "get_flight", {"flight_id": flight["id"]}, flight[key])
        answers.append(f"{flight['id']}: {flight[key]}")
    draft.question = " ".join(s["question"] for s in draft.subtasks)
    draft.final_answer = flight[key] if n == 1 else "; ".join(answers)
    return draft


def airline_book(world: dict[str, Any], rng: random.Random) -> Draft:
    route = rng.choice(sorted({(f["origin"], f["destination"], f["date"]) for f in world["flights"]}))
    flight = _cheapest(world, *route)
    if flight is None:
        raise Unfit
    passenger = rng.choice(world["passengers"])
    booking_id = f"{flight['id']}-{len(world['bookings']) + 1:03d}"
    o, d, date = route
    draft = Draft(f"Book passenger {passenger['id']} on the cheapest flight with free seats from {o} to {d} on {date}, "
                  f"then tell me how many seats remain on it.", flight["seats_left"] - 1)  # fmt: skip
    s1 = draft.add(f"Which is the cheapest {o}-{d} flight with free seats on {date}?", "get_cheapest_flight",
                   {"origin": o, "destination": d, "date": date}, flight["id"])  # fmt: skip
    s2 = draft.add(f"Book {passenger['id']} on it: what is the booking id?", "book_flight", {"flight_id": flight["id"], "passenger_id": passenger["id"]}, booking_id, [s1])
    draft.add("How many seats are left on that flight now?", "get_flight", {"flight_id": flight["id"]}, flight["seats_left"] - 1, [s2])
    return draft


def airline_rebook(world: dict[str, Any], rng: random.Random) -> Draft:
    """Cancel a confirmed booking and take the cheapest flight of another route; count active bookings."""
    confirmed = [b for b in world["bookings"] if b["status"] == "confirmed"]
    if not confirmed:
        raise Unfit
    booking = rng.choice(confirmed)
    pid = booking["passenger_id"]
    route = rng.choice(sorted({(f["origin"], f["destination"], f["date"]) for f in world["flights"]}))
    freed = {**{f["id"]: f["seats_left"] for f in world["flights"]}}
    freed[booking["flight_id"]] += 1
    options = [f for f in world["flights"] if (f["origin"], f["destination"], f["date"]) == route and freed[f["id"]] > 0]
    if not options:
        raise Unfit
    flight = min(options, key=lambda f: (f["price"], f["departure"]))
    active = sum(1 for b in world["bookings"] if b["passenger_id"] == pid and b["status"] == "confirmed")
    new_id = f"{flight['id']}-{len(world['bookings']) + 1:03d}"
    o, d, date = route
    draft = Draft(f"Passenger {pid} cancels booking {booking['id']} and instead takes the cheapest {o}-{d} flight with free seats "
                  f"on {date}. Do both and tell me the new booking id and how many active bookings {pid} has then.",
                  f"{new_id}; {active} active bookings")  # fmt: skip
    s1 = draft.add(f"Cancel {booking['id']}: what is its status?", "cancel_booking", {"booking_id": booking["id"]}, "cancelled")
    s2 = draft.add(f"Which is the cheapest {o}-{d} flight with free seats on {date}?", "get_cheapest_flight", {"origin": o, "destination": d, "date": date}, flight["id"], [s1])
    s3 = draft.add(f"Book {pid} on it: what is the booking id?", "book_flight", {"flight_id": flight["id"], "passenger_id": pid}, new_id, [s2])
    draft.add(f"How many active bookings does {pid} have now?", "get_passenger", {"passenger_id": pid}, active, [s3])
    if rng.random() < 0.5:  # a second, independent branch
        other = rng.choice(world["flights"])
        draft.add(f"Also: at what time does flight {other['id']} depart?", "get_flight", {"flight_id": other["id"]}, other["departure"])
        draft.question += f" Also, at what time does flight {other['id']} depart?"
    return draft


def entity_ids() -> list[str]:
    """Every id a generated world can hold that a question names and a call takes (flights, passengers, doctors,
    slots, patients, prescriptions, products, customers, orders; booking ids, built from a flight's, are left
    out): a tokenizer that keeps each whole sees the same id space whatever seed made the arenas."""
    flights = [f"{code}{n}" for code, _ in AIRLINES for n in range(100, 1000)]
    people = [f"P{i:03d}" for i in range(1, len(NAMES) + 1)] + [f"PT{i}" for i in range(1, len(NAMES) + 1)] + [f"C{i}" for i in range(1, len(NAMES) + 1)]
    doctors = [f"D{i:02d}" for i in range(1, len(NAMES) + 1)]
    slots = [f"SL{i}" for i in range(1, 8 * len(NAMES) + 1)]
    prescriptions = [f"RX{i}" for i in range(10, 10 + 3 * len(NAMES))]
    n_products = sum(len(names) for names in PRODUCTS.values())
    skus = [f"SKU-{i * 7 + 101}" for i in range(n_products)]
    orders = [f"O-{1001 + i}" for i in range(len(NAMES))]
    return flights + people + doctors + slots + prescriptions + skus + orders


# ----------------------------------------------------------------------------------------------- clinic
SPECIALTIES = ["cardiology", "dermatology", "pediatrics", "neurology", "oncology", "orthopedics"]
DRUGS = [("atorvastatin", 20), ("metformin", 500), ("cetirizine", 10), ("lisinopril", 10), ("amoxicillin", 250), ("ibuprofen", 400)]


def clinic_world(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    doctors = [{"id": f"D{i + 1:02d}", "name": f"Dr. {n.split()[1]}", "specialty": rng.choice(SPECIALTIES), "clinic": rng.choice(["Northside", "Riverside", "Uptown"])}
               for i, n in enumerate(rng.sample(NAMES, 4))]  # fmt: skip
    date = f"2026-12-{rng.randint(1, 28):02d}"
    slots = []
    for doctor in doctors:
        for t in sorted(rng.sample(["08:30", "09:00", "09:45", "10:30", "11:15", "13:00", "14:00", "15:30"], rng.randint(1, 4))):
            slots.append({"id": f"SL{len(slots) + 1}", "doctor_id": doctor["id"], "date": date, "time": t, "booked": rng.choice([0, 0, 1])})
    patients = [{"id": f"PT{i + 1}", "name": n, "insurance": rng.choice(["Aetna", "BlueShield", "Cigna"])} for i, n in enumerate(rng.sample(NAMES, 3))]
    prescriptions = []
    for patient in patients:
        for drug, dose in rng.sample(DRUGS, rng.randint(1, 3)):
            prescriptions.append({"id": f"RX{len(prescriptions) + 10}", "patient_id": patient["id"], "drug": drug, "dose_mg": dose, "refills_left": rng.randint(1, 5)})
    return {"doctors": doctors, "slots": slots, "patients": patients, "appointments": [], "prescriptions": prescriptions}


def clinic_single(world: dict[str, Any], rng: random.Random, n: int = 1) -> Draft:
    draft = Draft("", None)
    answers = []
    for kind in rng.choices(["doctor", "rx"], k=n):
        if kind == "doctor":
            doctor = rng.choice(world["doctors"])
            if any(s["gold_call"]["arguments"].get("doctor_id") == doctor["id"] for s in draft.subtasks):
                raise Unfit
            draft.add(f"What is the specialty of doctor {doctor['id']}?", "get_doctor", {"doctor_id": doctor["id"]}, doctor["specialty"])
            answers.append(doctor["specialty"])
        else:
            rx = rng.choice(world["prescriptions"])
            if any(s["gold_call"]["arguments"].get("prescription_id") == rx["id"] for s in draft.subtasks):
                raise Unfit
            key, text = rng.choice([("refills_left", "How many refills are left on prescription {id}?"), ("drug", "Which drug is prescription {id} for?")])
            draft.add(text.format(**rx), "get_prescription", {"prescription_id": rx["id"]}, rx[key])
            answers.append(str(rx[key]))
    draft.question = " ".join(s["question"] for s in draft.subtasks)
    draft.final_answer = draft.subtasks[0]["answer"] if n == 1 else "; ".join(answers)
    return draft


def clinic_book(world: dict[str, Any], rng: random.Random) -> Draft:
    doctor = rng.choice(world["doctors"])
    open_slots = sorted((s for s in world["slots"] if s["doctor_id"] == doctor["id"] and not s["booked"]), key=lambda s: s["time"])
    if len(open_slots) < 2:
        raise Unfit
    patient = rng.choice(world["patients"])
    first, second = open_slots[0], open_slots[1]
    draft = Draft(f"Book patient {patient['id']} into doctor {doctor['id']}'s first open slot on {first['date']}. At what time is it, "
                  "and what is the first open slot left that day afterwards?", f"{first['time']}; next open slot {second['time']}")  # fmt: skip
    s1 = draft.add(f"Which is {doctor['id']}'s first open slot on {first['date']}?", "get_first_open_slot", {"doctor_id": doctor["id"], "date": first["date"]}, first["id"])
    s2 = draft.add(f"Book {patient['id']} into it: at what time?", "book_appointment", {"patient_id": patient["id"], "slot_id": first["id"]}, first["time"], [s1])
    draft.add("What is the first open slot that day now?", "get_first_open_slot", {"doctor_id": doctor["id"], "date": first["date"]}, second["time"], [s2])
    return draft


def clinic_refill_all(world: dict[str, Any], rng: random.Random) -> Draft:
    patient = rng.choice(world["patients"])
    rxs = sorted((r for r in world["prescriptions"] if r["patient_id"] == patient["id"]), key=lambda r: r["id"])
    if len(rxs) < 2:
        raise Unfit
    draft = Draft(f"Refill every prescription of patient {patient['id']} once. How many refills are left on each afterwards?",
                  ", ".join(f"{r['id']}: {r['refills_left'] - 1}" for r in rxs))  # fmt: skip
    s1 = draft.add(f"Which prescriptions does {patient['id']} have?", "get_patient", {"patient_id": patient["id"]}, [r["id"] for r in rxs])
    for r in rxs:
        draft.add(f"Refill {r['id']}: refills left?", "refill_prescription", {"prescription_id": r["id"]}, r["refills_left"] - 1, [s1])
    return draft


# ----------------------------------------------------------------------------------------------- retail
PRODUCTS = {"cables": ["USB-C cable 1m", "USB-C cable 2m", "HDMI cable", "Lightning cable"], "audio": ["Earbuds", "Headphones", "Speaker"],
            "keyboards": ["Mechanical keyboard", "Compact keyboard"], "monitors": ["24-inch monitor", "27-inch monitor"]}  # fmt: skip


def retail_world(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    products = []
    prices = rng.sample(range(500, 40000), 20)
    for category, names in PRODUCTS.items():
        for name in rng.sample(names, rng.randint(1, len(names))):
            products.append({"sku": f"SKU-{len(products) * 7 + 101}", "name": name, "category": category,
                             "price": prices.pop() / 100, "stock": rng.choice([0, 3, 5, 12, 40])})  # fmt: skip
    customers = [{"id": f"C{i + 1}", "name": n, "tier": rng.choice(["gold", "silver", "bronze"]), "store_credit": float(rng.randint(0, 50))}
                 for i, n in enumerate(rng.sample(NAMES, 3))]  # fmt: skip
    orders, items = [], []
    for customer in customers:
        product = rng.choice(products)
        qty = rng.randint(1, 2)
        oid = f"O-{1001 + len(orders)}"
        orders.append({"id": oid, "customer_id": customer["id"], "status": rng.choice(["delivered", "shipped", "placed"]), "total": round(product["price"] * qty, 2)})
        items.append({"order_id": oid, "sku": product["sku"], "quantity": qty, "unit_price": product["price"]})
    return {"products": products, "customers": customers, "orders": orders, "order_items": items}


def retail_single(world: dict[str, Any], rng: random.Random, n: int = 1) -> Draft:
    draft = Draft("", None)
    picked = rng.sample(world["products"], n) if n <= len(world["products"]) else None
    if picked is None:
        raise Unfit
    for product in picked:
        key, text = rng.choice([("price", "What does {sku} cost?"), ("stock", "How many {sku} are in stock?"), ("name", "What is product {sku}?")])
        draft.add(text.format(**product), "get_product", {"sku": product["sku"]}, product[key])
    draft.question = " ".join(s["question"] for s in draft.subtasks)
    draft.final_answer = draft.subtasks[0]["answer"] if n == 1 else "; ".join(f"{p['sku']}: {s['answer']}" for p, s in zip(picked, draft.subtasks))
    return draft


def retail_order(world: dict[str, Any], rng: random.Random) -> Draft:
    category = rng.choice(sorted({p["category"] for p in world["products"]}))
    options = [p for p in world["products"] if p["category"] == category and p["stock"] > 0]
    if not options:
        raise Unfit
    product = min(options, key=lambda p: (p["price"], p["sku"]))
    qty = rng.randint(1, min(3, product["stock"]))
    customer = rng.choice(world["customers"])
    total = round(product["price"] * qty, 2)
    draft = Draft(f"Customer {customer['id']} wants {qty} of the cheapest {category} item in stock. Place the order, then tell me its "
                  "total and how many of that item are left.", f"{total}; {product['stock'] - qty} left")  # fmt: skip
    s1 = draft.add(f"Which {category} item in stock is cheapest?", "get_cheapest_in_category", {"category": category}, product["sku"])
    s2 = draft.add(f"Order {qty} for {customer['id']}: what is the total?", "place_order", {"customer_id": customer["id"], "sku": product["sku"], "quantity": qty}, total, [s1])
    draft.add("How many are left in stock now?", "get_product", {"sku": product["sku"]}, product["stock"] - qty, [s2])
    return draft


def retail_return(world: dict[str, Any], rng: random.Random) -> Draft:
    delivered = [o for o in world["orders"] if o["status"] == "delivered"]
    if not delivered:
        raise Unfit
    order = rng.choice(delivered)
    item = next(i for i in world["order_items"] if i["order_id"] == order["id"])
    customer = next(c for c in world["customers"] if c["id"] == order["customer_id"])
    product = next(p for p in world["products"] if p["sku"] == item["sku"])
    refund = round(item["unit_price"] * item["quantity"], 2)
    credit = round(customer["store_credit"] + refund, 2)
    stock = product["stock"] + item["quantity"]
    draft = Draft(f"Customer {customer['id']} returns the item of order {order['id']}. Process the return, then tell me their store "
                  "credit and that item's stock afterwards.", f"store credit {credit}; stock {stock}")  # fmt: skip
    s1 = draft.add(f"Which product is in order {order['id']}?", "get_order", {"order_id": order["id"]}, item["sku"])
    s2 = draft.add("Return it: how much is refunded?", "return_item", {"order_id": order["id"], "sku": item["sku"]}, refund, [s1])
    draft.add(f"What is {customer['id']}'s store credit now?", "get_customer", {"customer_id": customer["id"]}, credit, [s2])
    draft.add("What is that product's stock now?", "get_product", {"sku": item["sku"]}, stock, [s2])
    return draft


@dataclass(frozen=True)
class World:
    name: str
    make: Callable[[random.Random], dict[str, list[dict[str, Any]]]]
    templates: dict[str, list[Callable[[dict[str, Any], random.Random], Draft]]]


WORLDS = [
    World("airline", airline_world, {
        "single_hop": [airline_single], "parallel_single_hop": [lambda w, r: airline_single(w, r, r.randint(2, 3))],
        "multi_hop": [airline_book], "parallel_multi_hop": [airline_rebook]}),
    World("clinic", clinic_world, {
        "single_hop": [clinic_single], "parallel_single_hop": [lambda w, r: clinic_single(w, r, r.randint(2, 3))],
        "multi_hop": [clinic_book], "parallel_multi_hop": [clinic_refill_all]}),
    World("retail", retail_world, {
        "single_hop": [retail_single], "parallel_single_hop": [lambda w, r: retail_single(w, r, r.randint(2, 3))],
        "multi_hop": [retail_order], "parallel_multi_hop": [retail_return]}),
]  # fmt: skip

DEFAULT_MIX = {"single_hop": 0.15, "parallel_single_hop": 0.15, "multi_hop": 0.25, "parallel_multi_hop": 0.45}
"""Weighted toward parallel multi-hop, as the paper's RL set is (47.8%)."""


def generate(n: int, seed: int = 0, mix: dict[str, float] | None = None, worlds: list[str] | None = None) -> Iterator[Arena]:
    """`n` arenas, reproducible from `seed`; scenario types drawn from `mix`, worlds in turn."""
    mix = mix or DEFAULT_MIX
    chosen = [w for w in WORLDS if worlds is None or w.name in worlds]
    base = {w.name: load_world(w.name)[0] for w in chosen}
    rng = random.Random(seed)
    made = 0
    while made < n:
        world = chosen[made % len(chosen)]
        scenario = rng.choices(list(mix), weights=list(mix.values()))[0]
        local = random.Random(rng.getrandbits(64))
        data = world.make(local)
        try:
            draft = local.choice(world.templates[scenario])(data, local)
        except Unfit:
            continue
        template = base[world.name]
        yield Arena(
            id=f"offline-{world.name}-{seed}-{made:06d}", domain=world.name, scenario_type=scenario, question=draft.question,
            final_answer=draft.final_answer, subtasks=draft.subtasks, tools=template.tools, implementation=template.implementation,
            initial_state={"ddl": template.initial_state.ddl, "rows": data},
            provenance=Provenance(source="offline", generator="synth.arenas.offline", seed=seed),
        )  # fmt: skip
        made += 1


def mix_report(arenas: list[Arena]) -> dict[str, Any]:
    """Scenario-type shares and hop counts, beside the paper's RL set (6,596 samples, mean 4.37 hops, 47.8% parallel multi-hop)."""
    n = len(arenas)
    hops = [len(a.scored_subtasks) for a in arenas]
    return {
        "arenas": n,
        "scenario_share": {s: sum(a.scenario_type.value == s for a in arenas) / n for s in SCENARIOS} if n else {},
        "mean_hops": sum(hops) / n if n else 0.0,
        "hop_histogram": {str(h): hops.count(h) for h in sorted(set(hops))},
        "by_domain": {d: sum(a.domain == d for a in arenas) for d in sorted({a.domain for a in arenas})},
        "paper_rl_set": {"samples": 6596, "mean_hops": 4.37, "parallel_multi_hop_share": 0.478},
    }

"""Airline world: flights with seat counts, passengers, bookings. Booking and cancelling change seats."""


def _flight(db, flight_id):
    row = db.execute("SELECT * FROM flights WHERE id = ?", (flight_id,)).fetchone()
    if row is None:
        raise ValueError(f"no flight with id {flight_id!r}")
    return row


def search_flights(db, origin, destination, date):
    rows = db.execute(
        "SELECT id, airline, departure, price, seats_left FROM flights"
        " WHERE origin = ? AND destination = ? AND date = ? ORDER BY departure",
        (origin.upper(), destination.upper(), date),
    ).fetchall()
    return {"origin": origin.upper(), "destination": destination.upper(), "date": date, "flights": rows}


def get_cheapest_flight(db, origin, destination, date):
    row = db.execute(
        "SELECT id, price FROM flights WHERE origin = ? AND destination = ? AND date = ? AND seats_left > 0"
        " ORDER BY price, departure LIMIT 1",
        (origin.upper(), destination.upper(), date),
    ).fetchone()
    if row is None:
        raise ValueError(f"no flight with free seats from {origin} to {destination} on {date}")
    return {"flight_id": row["id"], "price": row["price"]}


def get_flight(db, flight_id):
    return _flight(db, flight_id)


def get_passenger(db, passenger_id):
    row = db.execute("SELECT * FROM passengers WHERE id = ?", (passenger_id,)).fetchone()
    if row is None:
        raise ValueError(f"no passenger with id {passenger_id!r}")
    active = db.execute(
        "SELECT COUNT(*) AS n FROM bookings WHERE passenger_id = ? AND status = 'confirmed'", (passenger_id,)
    ).fetchone()["n"]
    return {**row, "active_bookings": active}


def list_bookings(db, passenger_id):
    get_passenger(db, passenger_id)
    return db.execute(
        "SELECT id AS booking_id, flight_id, status FROM bookings WHERE passenger_id = ? ORDER BY id", (passenger_id,)
    ).fetchall()


def book_flight(db, flight_id, passenger_id):
    flight = _flight(db, flight_id)
    get_passenger(db, passenger_id)
    if flight["seats_left"] <= 0:
        raise ValueError(f"flight {flight_id} is full")
    db.execute("UPDATE flights SET seats_left = seats_left - 1 WHERE id = ?", (flight_id,))
    n = db.execute("SELECT COUNT(*) AS n FROM bookings").fetchone()["n"] + 1
    booking_id = f"{flight_id}-{n:03d}"
    db.execute("INSERT INTO bookings VALUES (?, ?, ?, 'confirmed')", (booking_id, flight_id, passenger_id))
    return {"booking_id": booking_id, "status": "confirmed"}


def cancel_booking(db, booking_id):
    row = db.execute("SELECT * FROM bookings WHERE id = ?", (booking_id,)).fetchone()
    if row is None:
        raise ValueError(f"no booking with id {booking_id!r}")
    if row["status"] != "confirmed":
        raise ValueError(f"booking {booking_id} is already {row['status']}")
    db.execute("UPDATE bookings SET status = 'cancelled' WHERE id = ?", (booking_id,))
    db.execute("UPDATE flights SET seats_left = seats_left + 1 WHERE id = ?", (row["flight_id"],))
    return {"booking_id": booking_id, "status": "cancelled"}

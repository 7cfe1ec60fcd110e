"""Clinic world: doctors, appointment slots, patients and prescriptions. Booking takes a slot; refills count down."""


def _one(db, sql, key, what):
    row = db.execute(sql, (key,)).fetchone()
    if row is None:
        raise ValueError(f"no {what} with id {key!r}")
    return row


def find_doctors(db, specialty):
    return db.execute(
        "SELECT id, name, clinic FROM doctors WHERE lower(specialty) = lower(?) ORDER BY id", (specialty,)
    ).fetchall()


def get_doctor(db, doctor_id):
    return _one(db, "SELECT * FROM doctors WHERE id = ?", doctor_id, "doctor")


def get_first_open_slot(db, doctor_id, date):
    get_doctor(db, doctor_id)
    row = db.execute(
        "SELECT id AS slot_id, time FROM slots WHERE doctor_id = ? AND date = ? AND booked = 0 ORDER BY time LIMIT 1",
        (doctor_id, date),
    ).fetchone()
    if row is None:
        raise ValueError(f"doctor {doctor_id} has no open slot on {date}")
    return row


def book_appointment(db, patient_id, slot_id):
    _one(db, "SELECT id FROM patients WHERE id = ?", patient_id, "patient")
    slot = _one(db, "SELECT * FROM slots WHERE id = ?", slot_id, "slot")
    if slot["booked"]:
        raise ValueError(f"slot {slot_id} is already taken")
    db.execute("UPDATE slots SET booked = 1 WHERE id = ?", (slot_id,))
    n = db.execute("SELECT COUNT(*) AS n FROM appointments").fetchone()["n"] + 1
    appointment_id = f"AP{n:03d}"
    db.execute("INSERT INTO appointments VALUES (?, ?, ?)", (appointment_id, patient_id, slot_id))
    return {"appointment_id": appointment_id, "date": slot["date"], "time": slot["time"]}


def get_patient(db, patient_id):
    row = _one(db, "SELECT * FROM patients WHERE id = ?", patient_id, "patient")
    rx = [r["id"] for r in db.execute("SELECT id FROM prescriptions WHERE patient_id = ? ORDER BY id", (patient_id,))]
    n = db.execute("SELECT COUNT(*) AS n FROM appointments WHERE patient_id = ?", (patient_id,)).fetchone()["n"]
    return {**row, "prescriptions": rx, "appointments": n}


def get_prescription(db, prescription_id):
    return _one(db, "SELECT * FROM prescriptions WHERE id = ?", prescription_id, "prescription")


def refill_prescription(db, prescription_id):
    rx = get_prescription(db, prescription_id)
    if rx["refills_left"] <= 0:
        raise ValueError(f"prescription {prescription_id} has no refills left")
    db.execute("UPDATE prescriptions SET refills_left = refills_left - 1 WHERE id = ?", (prescription_id,))
    return {"prescription_id": prescription_id, "drug": rx["drug"], "refills_left": rx["refills_left"] - 1}

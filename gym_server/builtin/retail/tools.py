"""Retail world: a catalogue with stock, customers with store credit, orders and returns."""


def _one(db, sql, key, what):
    row = db.execute(sql, (key,)).fetchone()
    if row is None:
        raise ValueError(f"no {what} {key!r}")
    return row


def search_products(db, query):
    like = f"%{query.lower()}%"
    return db.execute(
        "SELECT sku, name, price FROM products WHERE lower(name) LIKE ? OR lower(category) LIKE ? ORDER BY sku",
        (like, like),
    ).fetchall()


def get_cheapest_in_category(db, category):
    row = db.execute(
        "SELECT sku, name, price FROM products WHERE lower(category) = lower(?) AND stock > 0 ORDER BY price, sku LIMIT 1",
        (category,),
    ).fetchone()
    if row is None:
        raise ValueError(f"nothing in stock in category {category!r}")
    return row


def get_product(db, sku):
    return _one(db, "SELECT * FROM products WHERE sku = ?", sku, "product")


def get_customer(db, customer_id):
    row = _one(db, "SELECT * FROM customers WHERE id = ?", customer_id, "customer")
    n = db.execute(
        "SELECT COUNT(*) AS n FROM orders WHERE customer_id = ? AND status IN ('placed', 'shipped')", (customer_id,)
    ).fetchone()["n"]
    return {**row, "open_orders": n}


def get_order(db, order_id):
    order = _one(db, "SELECT * FROM orders WHERE id = ?", order_id, "order")
    items = db.execute("SELECT sku, quantity, unit_price FROM order_items WHERE order_id = ?", (order_id,)).fetchall()
    return {**order, "items": items}


def place_order(db, customer_id, sku, quantity):
    get_customer(db, customer_id)
    product = get_product(db, sku)
    if quantity < 1:
        raise ValueError("quantity must be at least 1")
    if product["stock"] < quantity:
        raise ValueError(f"only {product['stock']} of {sku} in stock")
    n = db.execute("SELECT COUNT(*) AS n FROM orders").fetchone()["n"] + 1001
    order_id = f"O-{n}"
    total = round(product["price"] * quantity, 2)
    db.execute("UPDATE products SET stock = stock - ? WHERE sku = ?", (quantity, sku))
    db.execute("INSERT INTO orders VALUES (?, ?, 'placed', ?)", (order_id, customer_id, total))
    db.execute("INSERT INTO order_items VALUES (?, ?, ?, ?)", (order_id, sku, quantity, product["price"]))
    return {"order_id": order_id, "status": "placed", "total": total}


def return_item(db, order_id, sku):
    order = get_order(db, order_id)
    item = next((i for i in order["items"] if i["sku"] == sku), None)
    if item is None:
        raise ValueError(f"order {order_id} has no item {sku}")
    if order["status"] != "delivered":
        raise ValueError(f"order {order_id} is {order['status']}; only delivered orders can be returned")
    refund = round(item["unit_price"] * item["quantity"], 2)
    db.execute("DELETE FROM order_items WHERE order_id = ? AND sku = ?", (order_id, sku))
    db.execute("UPDATE products SET stock = stock + ? WHERE sku = ?", (item["quantity"], sku))
    db.execute("UPDATE customers SET store_credit = round(store_credit + ?, 2) WHERE id = ?", (refund, order["customer_id"]))
    db.execute("UPDATE orders SET status = 'returned' WHERE id = ?", (order_id,))
    return {"order_id": order_id, "sku": sku, "refund": refund}

"""A stateful object kept in a child and used from several threads at once."""

import threading

import spawnproxy


class Inventory:
    def __init__(self) -> None:
        self.stock: dict[str, int] = {}

    def add(self, item: str, count: int) -> int:
        self.stock[item] = self.stock.get(item, 0) + count
        return self.stock[item]

    def total(self) -> int:
        return sum(self.stock.values())


def main() -> None:
    # Inventory is defined in this __main__: it travels by value (through dill).
    inventory = spawnproxy.run_object(Inventory())
    workers = [
        threading.Thread(target=lambda name=name: [inventory.add(name, 1) for _ in range(200)])
        for name in ("apples", "pears", "plums", "figs")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print("total:", inventory.total(), "stock:", inventory.stock)
    inventory.terminate_daemon()


if __name__ == "__main__":
    main()

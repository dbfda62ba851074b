/// A first-in, first-out queue for values handed between threads (under the caller's lock):
/// `pop` is O(1), and the storage is reused once the queue empties.
public struct Fifo<Element> {
  private var items: [Element] = []
  private var head = 0

  public init() {}

  public var count: Int { items.count - head }
  public var isEmpty: Bool { head == items.count }

  public mutating func push(_ item: Element) { items.append(item) }

  /// The oldest item, or nil when empty.
  public mutating func pop() -> Element? {
    guard head < items.count else { return nil }
    let item = items[head]
    head += 1
    if head == items.count {
      items.removeAll(keepingCapacity: true)
      head = 0
    }
    return item
  }

  /// Drops every item (and the storage).
  public mutating func removeAll() {
    items.removeAll()
    head = 0
  }
}

import Synchronization
import Testing

@testable import SnapshotSys

/// The waiting primitives, driven by real threads. No test decides an order by sleeping:
/// where a thread must be blocked before the next step, the test waits until it is (a
/// promise it fulfils once it returns), with a timed wait that fails instead of hanging.
@Suite struct WaitingTests {
  struct Failed: Error, Equatable {}

  @Test func promiseGivesTheFirstValueToEveryWaiter() throws {
    let p = Promise<Int>()
    #expect(p.value == nil)
    let waiters = try (0..<4).map { _ in try Threads.run { p.wait() } }
    #expect(p.fulfill(7))
    #expect(!p.fulfill(8))
    for w in waiters { #expect(w.wait(seconds: 10) == 7) }
    #expect(p.value == 7)
  }

  @Test func promiseTimedWaitGivesUp() {
    let p = Promise<Int>()
    #expect(p.wait(seconds: 0.05) == nil)
    p.fulfill(1)
    #expect(p.wait(seconds: 0) == 1)
  }

  @Test func conditionWaitsForTheStateItNeeds() throws {
    let c = Condition(0)
    let reached = try Threads.run { c.wait(until: { $0 >= 3 }) { $0 } }
    for _ in 0..<3 { c.update { $0 += 1 } }
    #expect(reached.wait(seconds: 10) == 3)
    #expect(c.wait(until: { $0 > 3 }, seconds: 0.05) { $0 } == nil)
  }

  @Test func singleFlightRunsOnePerKeyAtATime() {
    let flight = SingleFlight<String, Int>()
    let (first, leads) = flight.join("a")
    #expect(leads)
    let (second, secondLeads) = flight.join("a")
    #expect(!secondLeads)
    #expect(flight.join("b").leads)  // another key is its own flight
    flight.finish("a", with: 5)
    #expect(first.wait(seconds: 10) == 5 && second.wait(seconds: 10) == 5)
    #expect(flight.join("a").leads)  // finished: the next ask leads again
  }

  @Test func queueKeepsOrderAndBlocksAFullProducer() throws {
    let q = BoundedQueue<Int, Failed>(limit: 2)
    #expect(q.offer(1) == .room)
    #expect(q.offer(2) == .full)
    let put = try Threads.run { q.put(3) }  // blocks until a take makes room
    #expect(put.wait(seconds: 0.05) == nil)
    #expect(try q.take() == 1)
    #expect(put.wait(seconds: 10) == true)
    q.close()
    #expect(!q.put(4))
    #expect(try q.take() == 2)
    #expect(try q.take() == 3)
    #expect(try q.take() == nil)
    #expect(try q.take() == nil)  // the end stays visible
  }

  @Test func queueThrowsTheProducersFailureAfterWhatCameBefore() throws {
    let q = BoundedQueue<Int, Failed>(limit: 4)
    q.put(1)
    q.close(failure: Failed())
    q.close()  // only the first close counts
    #expect(q.failure == Failed())
    #expect(try q.take() == 1)
    #expect(throws: Failed.self) { try q.take() }
  }

  @Test func abandonWakesABlockedProducerAndDropsTheQueue() throws {
    let q = BoundedQueue<Int, Failed>(limit: 1)
    q.put(1)
    let put = try Threads.run { q.put(2) }
    #expect(put.wait(seconds: 0.05) == nil)
    q.abandon()
    #expect(put.wait(seconds: 10) == false)
    #expect(try q.take() == nil)
  }

  @Test func takeWaitsForAProducerAndWakesOneWaitingForRoom() throws {
    let q = BoundedQueue<[UInt8], Failed>(limit: 10) { $0.count }
    let taken = try Threads.run { (try? q.take()).flatMap { $0 } }
    #expect(q.offer([UInt8](repeating: 0, count: 12)) == .full)
    #expect(taken.wait(seconds: 10)??.count == 12)
    let woken = Promise<Void>()
    q.whenRoom { woken.fulfill(()) }  // room now: at once
    #expect(woken.wait(seconds: 0) != nil)
    #expect(q.offer([UInt8](repeating: 0, count: 10)) == .full)
    let later = Promise<Void>()
    q.whenRoom { later.fulfill(()) }
    #expect(later.value == nil)
    _ = try q.take()
    #expect(later.wait(seconds: 10) != nil)
  }

  @Test func abandonWakesOneWaitingForRoom() {
    let q = BoundedQueue<Int, Failed>(limit: 1)
    #expect(q.offer(1) == .full)
    let woken = Promise<Void>()
    q.whenRoom { woken.fulfill(()) }
    #expect(woken.value == nil)
    q.abandon()
    #expect(woken.wait(seconds: 10) != nil)
    #expect(q.offer(2) == .closed)
  }
}

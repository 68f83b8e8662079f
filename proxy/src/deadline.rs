//! Attempt deadlines without one tokio timer per attempt.
//!
//! Every attempt on a route with `timeout` or `per_try_timeout` has a deadline, and almost every
//! attempt ends long before it. A tokio timer per attempt costs about 1,200 instructions for a
//! deadline that never fires: the entry's runtime handle, registering in the time driver's wheel
//! under its lock on the first poll, and taking it out again on drop.
//!
//! Here each runtime worker thread keeps one queue of deadlines: a slab of slots (one per
//! waiting attempt: its waker, whether its deadline passed) and a min-heap of deadlines. One
//! driver task per queue holds one tokio timer, set at the earliest deadline that may still be
//! live. An attempt takes a slot and pushes its deadline (one uncontended lock), and gives the
//! slot back when it ends; the timer moves only when a deadline comes in earlier than the one
//! it is set at. Given-back deadlines stay in the heap, so the driver may wake for a deadline
//! nobody waits for any more; it then drops the stale ones from the top and sets its timer at the
//! first live one. Stale entries are swept out in one pass when they outnumber the live ones, so
//! the heap stays proportional to the attempts in flight.
//!
//! hyper's HTTP/1.1 header-read timer, which every request on a keep-alive connection takes,
//! runs on the same queue ([`QueueTimer`]).
//!
//! A deadline fires when a tokio timer set at it would (the driver's timer is a tokio timer at
//! that instant), so tests with paused time see the same timings. As with
//! `tokio::time::timeout`, the attempt's own future is polled first, so an answer that is ready
//! when the deadline passes still wins.

use std::{
    cell::RefCell,
    cmp::Reverse,
    collections::BinaryHeap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::runtime;

use crate::{clock, policy::Nanos};

/// The attempt's deadline passed before its future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `future` until the [`clock`] instant `at`: its output, or [`Elapsed`] once `at` has
/// passed with the future still pending.
///
/// Must be polled inside a tokio runtime (the queue's driver is a task of the runtime that
/// first polls it).
pub fn within<F: Future + Unpin>(at: Nanos, future: F) -> Within<F> {
    Within {
        future,
        sleep: sleep_until(at),
    }
}

/// The future [`within`] returns.
#[derive(Debug)]
pub struct Within<F> {
    future: F,
    sleep: Sleep,
}

impl<F: Future + Unpin> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(output) = Pin::new(&mut this.future).poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(&mut this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

/// A future that finishes once the [`clock`] instant `at` has passed, waiting on the worker's
/// queue: takes its slot on the first poll, gives it back when dropped.
pub fn sleep_until(at: Nanos) -> Sleep {
    Sleep { at, entry: None }
}

/// The future [`sleep_until`] returns.
#[derive(Debug)]
pub struct Sleep {
    at: Nanos,
    entry: Option<Entry>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match &this.entry {
            None => {
                this.entry = Some(Entry::register(this.at, cx.waker()));
                Poll::Pending
            }
            Some(entry) if entry.passed(cx.waker()) => Poll::Ready(()),
            Some(_) => Poll::Pending,
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

/// hyper's timer on the worker's deadline queue. hyper's HTTP/1.1 server takes a timer for
/// `header_read_timeout` at every request head it starts reading and drops it once the head is
/// in, so on a keep-alive connection every request pays for one; a tokio timer there cost
/// about 600 instructions per request beyond its allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueTimer;

impl hyper::rt::Timer for QueueTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(
            clock::now().saturating_add(crate::policy::nanos(duration)),
        ))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(clock::from_std(deadline)))
    }

    fn now(&self) -> std::time::Instant {
        // tokio's clock, so hyper's deadlines follow paused time in tests as rafael's do.
        tokio::time::Instant::now().into_std()
    }
}

/// One waiting attempt's slot in its queue; gives the slot back when dropped.
#[derive(Debug)]
struct Entry {
    queue: Arc<Queue>,
    slot: u32,
    generation: u32,
}

impl Entry {
    fn register(at: Nanos, waker: &Waker) -> Entry {
        let queue = Queue::local();
        let (slot, generation, driver) = queue.insert(at, waker);
        match driver {
            Some(Wake::Spawn) => {
                tokio::spawn(Driver::new(queue.clone()));
            }
            Some(Wake::Driver(waker)) => waker.wake(),
            None => {}
        }
        Entry {
            queue,
            slot,
            generation,
        }
    }

    /// Whether the deadline passed; otherwise `waker` is the one to wake when it does.
    fn passed(&self, waker: &Waker) -> bool {
        let mut state = self.queue.lock();
        let slot = &mut state.slots[self.slot as usize];
        if slot.passed {
            return true;
        }
        match &slot.waker {
            Some(current) if current.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        false
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let waker = self.queue.give_back(self.slot, self.generation);
        // Dropped outside the lock: it may be the last reference to a task.
        drop(waker);
    }
}

/// What a registration asks of the driver.
enum Wake {
    /// No driver runs for the queue yet (or its runtime shut down): start one.
    Spawn,
    /// The new deadline is earlier than the driver's timer: wake it to move the timer.
    Driver(Waker),
}

/// A worker thread's deadlines (see the module's documentation).
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Slot>,
    /// Slots not in use.
    free: Vec<u32>,
    /// Every deadline registered and not yet popped: (deadline, slot, generation). An entry
    /// whose slot's generation moved on was given back (stale).
    heap: BinaryHeap<Reverse<(Nanos, u32, u32)>>,
    /// Slots in use.
    live: usize,
    /// Where the driver's timer is set (`None`: it waits for a registration without a timer).
    armed: Option<Nanos>,
    /// The driver's waker, once it has been polled.
    driver: Option<Waker>,
    /// Whether a driver task runs for this queue.
    driving: bool,
}

#[derive(Debug, Default)]
struct Slot {
    /// Bumped when the slot is given back, which makes its heap entries stale.
    generation: u32,
    waker: Option<Waker>,
    passed: bool,
}

/// Swept when stale entries are more than the live ones and this many more: a sweep then costs
/// at most a few operations per registration since the last one.
const SWEEP_SLACK: usize = 1024;

thread_local! {
    /// The queue of the runtime this thread last registered a deadline for.
    static LOCAL: RefCell<Option<(runtime::Id, Arc<Queue>)>> = const { RefCell::new(None) };
}

impl Queue {
    /// This thread's queue for the current runtime: a thread that serves two runtimes in turn
    /// gets a queue (and a driver) per runtime, since a driver only runs, and only reads the
    /// clock, of its own.
    fn local() -> Arc<Queue> {
        let id = runtime::Handle::current().id();
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            match &*local {
                Some((owner, queue)) if *owner == id => queue.clone(),
                _ => {
                    let queue = Arc::new(Queue::default());
                    *local = Some((id, queue.clone()));
                    queue
                }
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock (nothing in it panics midway), so a
        // poisoned lock's state is still good.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, at: Nanos, waker: &Waker) -> (u32, u32, Option<Wake>) {
        let mut state = self.lock();
        let state = &mut *state;
        let slot = match state.free.pop() {
            Some(slot) => slot,
            None => {
                state.slots.push(Slot::default());
                u32::try_from(state.slots.len() - 1).expect("fewer than 2^32 attempts in flight")
            }
        };
        let entry = &mut state.slots[slot as usize];
        entry.waker = Some(waker.clone());
        entry.passed = false;
        let generation = entry.generation;
        state.heap.push(Reverse((at, slot, generation)));
        state.live += 1;
        if state.heap.len() > 2 * state.live + SWEEP_SLACK {
            let slots = &state.slots;
            state.heap.retain(|Reverse((_, slot, generation))| {
                slots[*slot as usize].generation == *generation
            });
        }
        let wake = if !state.driving {
            state.driving = true;
            Some(Wake::Spawn)
        } else if state.armed.is_none_or(|armed| at < armed) {
            // Until the driver has run, `armed` is not its timer; it reads the heap when it
            // does. Taken, so a burst of earlier deadlines wakes it once.
            state.armed = Some(at);
            state.driver.take().map(Wake::Driver)
        } else {
            None
        };
        (slot, generation, wake)
    }

    fn give_back(&self, slot: u32, generation: u32) -> Option<Waker> {
        let mut state = self.lock();
        let state = &mut *state;
        let entry = &mut state.slots[slot as usize];
        debug_assert_eq!(entry.generation, generation, "a slot given back twice");
        entry.generation = entry.generation.wrapping_add(1);
        entry.passed = false;
        let waker = entry.waker.take();
        state.free.push(slot);
        state.live -= 1;
        waker
    }

    /// Marks every live deadline at or before `now` as passed, collecting the wakers to wake;
    /// drops stale entries from the top; returns the earliest deadline left.
    fn expire(&self, now: Nanos, wake: &mut Vec<Waker>, driver: &Waker) -> Option<Nanos> {
        let mut state = self.lock();
        let state = &mut *state;
        while let Some(&Reverse((at, slot, generation))) = state.heap.peek() {
            let entry = &mut state.slots[slot as usize];
            let live = entry.generation == generation;
            if live && at > now {
                break;
            }
            state.heap.pop();
            if live {
                entry.passed = true;
                wake.extend(entry.waker.take());
            }
        }
        let next = state.heap.peek().map(|Reverse((at, _, _))| *at);
        state.armed = next;
        match &state.driver {
            Some(current) if current.will_wake(driver) => {}
            _ => state.driver = Some(driver.clone()),
        }
        next
    }
}

/// The task that wakes a queue's attempts when their deadlines pass.
struct Driver {
    queue: Arc<Queue>,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Where `timer` is set, if anywhere.
    timer_at: Option<Nanos>,
    /// Wakers to wake, kept to reuse its allocation.
    wake: Vec<Waker>,
}

impl Driver {
    fn new(queue: Arc<Queue>) -> Driver {
        Driver {
            queue,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            timer_at: None,
            wake: Vec::new(),
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let next = this.queue.expire(clock::now(), &mut this.wake, cx.waker());
            for waker in this.wake.drain(..) {
                waker.wake();
            }
            let Some(at) = next else {
                // Nothing to wait for: a registration wakes the driver.
                return Poll::Pending;
            };
            if this.timer_at != Some(at) {
                this.timer.as_mut().reset(clock::instant(at));
                this.timer_at = Some(at);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: expire what is due, then set it again.
            this.timer_at = None;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The runtime is shutting down (a driver never ends by itself): the next registration
        // on this queue starts a new driver.
        let mut state = self.queue.lock();
        state.driving = false;
        state.driver = None;
        state.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, time::Duration};

    use tokio::time::Instant;

    use super::*;

    fn after(duration: Duration) -> Nanos {
        clock::now() + crate::policy::nanos(duration)
    }

    /// A future that never finishes.
    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_at_its_instant() {
        let started = Instant::now();
        let result = within(after(Duration::from_millis(300)), never()).await;
        assert_eq!(result, Err(Elapsed));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_finishes_first_keeps_its_output_and_gives_its_slot_back() {
        let result = within(
            after(Duration::from_secs(1)),
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                7
            }),
        )
        .await;
        assert_eq!(result, Ok(7));
        let queue = Queue::local();
        let state = queue.lock();
        assert_eq!(state.live, 0);
        assert_eq!(state.free.len(), state.slots.len());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_fire_in_order_whatever_order_they_came_in() {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for millis in [500u64, 100, 300, 200, 400] {
            let at = after(Duration::from_millis(millis));
            tasks.push(tokio::spawn(async move {
                assert_eq!(within(at, never()).await, Err(Elapsed));
                started.elapsed()
            }));
        }
        let mut fired = Vec::new();
        for task in tasks {
            fired.push(task.await.expect("the task finishes"));
        }
        let millis: Vec<u128> = fired.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [500, 100, 300, 200, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_moves_the_drivers_timer_forward() {
        // The driver's timer is set at 10 s; a deadline at 1 s must still fire at 1 s.
        let late = tokio::spawn(within(after(Duration::from_secs(10)), never()));
        // Until the driver has run and set its timer (no time passes meanwhile: nothing sleeps).
        while Queue::local().lock().armed.is_none() {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        assert_eq!(
            within(after(Duration::from_secs(1)), never()).await,
            Err(Elapsed)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        late.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn given_back_deadlines_are_skipped_and_swept() {
        // Many attempts that finish at once leave stale entries; the heap stays bounded, and
        // a later live deadline still fires on time.
        for _ in 0..(4 * SWEEP_SLACK) {
            let result = within(
                after(Duration::from_secs(30)),
                Box::pin(tokio::task::yield_now()),
            )
            .await;
            assert_eq!(result, Ok(()));
        }
        {
            let queue = Queue::local();
            let state = queue.lock();
            assert!(
                state.heap.len() <= 2 * state.live + SWEEP_SLACK + 1,
                "{} entries for {} live",
                state.heap.len(),
                state.live
            );
        }
        let started = Instant::now();
        assert_eq!(
            within(after(Duration::from_millis(50)), never()).await,
            Err(Elapsed)
        );
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn the_future_is_polled_before_the_deadline_is_checked() {
        // A future that becomes ready exactly at the deadline wins, as with tokio's timeout.
        let at = after(Duration::from_millis(100));
        let ready_at = clock::instant(at);
        let mut sleep = Box::pin(tokio::time::sleep_until(ready_at));
        let result = within(at, poll_fn(move |cx| sleep.as_mut().poll(cx))).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_past_fires_on_the_drivers_next_turn() {
        let started = Instant::now();
        assert_eq!(within(clock::now(), never()).await, Err(Elapsed));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn hypers_timer_sleeps_until_its_deadline_on_tokios_clock() {
        use hyper::rt::Timer;
        let timer = QueueTimer;
        let started = timer.now();
        timer.sleep_until(started + Duration::from_secs(10)).await;
        assert_eq!(timer.now() - started, Duration::from_secs(10));
        timer.sleep(Duration::from_millis(250)).await;
        assert_eq!(timer.now() - started, Duration::from_millis(10_250));
    }

    #[test]
    fn a_new_runtime_on_the_same_thread_gets_its_own_driver() {
        for _ in 0..3 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let started = Instant::now();
                assert_eq!(
                    within(after(Duration::from_millis(20)), never()).await,
                    Err(Elapsed)
                );
                assert_eq!(started.elapsed(), Duration::from_millis(20));
            });
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attempts_on_a_multi_thread_runtime_time_out_and_finish() {
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    within(after(Duration::from_millis(20)), never())
                        .await
                        .is_err()
                } else {
                    within(
                        after(Duration::from_secs(30)),
                        Box::pin(tokio::task::yield_now()),
                    )
                    .await
                    .is_ok()
                }
            }));
        }
        for task in tasks {
            assert!(task.await.expect("the task finishes"));
        }
    }
}

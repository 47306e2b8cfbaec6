//! Concurrent single-key reads share a statement. A few loads run at once; keys asked while
//! they all run wait and go together in the next one. Alone, a read goes at once; under load,
//! one round trip answers many calls, which is what bounds a read's throughput when the
//! storage is a network hop away.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

type Reply<V, E> = oneshot::Sender<Result<Option<V>, E>>;

/// A load stopped without answering (it panicked); the key's value is unknown.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("a shared read stopped without an answer")]
pub struct Unanswered;

pub struct Coalescer<K, V, E> {
    asks: mpsc::UnboundedSender<(K, Reply<V, E>)>,
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
    E: Clone + From<Unanswered> + Send + 'static,
{
    /// Runs up to `parallel` loads at once, each of at most `max_keys` distinct keys. `load`
    /// answers the keys it found; a key left out is not there. Needs a Tokio runtime.
    pub fn new<F, Fut>(parallel: usize, max_keys: usize, load: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
    {
        let (asks, mut waiting) = mpsc::unbounded_channel::<(K, Reply<V, E>)>();
        let permits = Arc::new(Semaphore::new(parallel.max(1)));
        let load = Arc::new(load);
        tokio::spawn(async move {
            loop {
                // A permit first: while every load runs, asks pile up for the next one.
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let Some(first) = waiting.recv().await else { return };
                let mut batch = vec![first];
                let mut keys: HashSet<K> = HashSet::from([batch[0].0.clone()]);
                while keys.len() < max_keys.max(1) {
                    let Ok(ask) = waiting.try_recv() else { break };
                    keys.insert(ask.0.clone());
                    batch.push(ask);
                }
                let load = load.clone();
                let span = tracing::debug_span!("shared_read", keys = keys.len());
                tokio::spawn(
                    async move {
                        let _permit = permit;
                        match load(keys.into_iter().collect()).await {
                            Ok(found) => {
                                for (key, reply) in batch {
                                    let _ = reply.send(Ok(found.get(&key).cloned()));
                                }
                            }
                            Err(e) => {
                                for (_, reply) in batch {
                                    let _ = reply.send(Err(e.clone()));
                                }
                            }
                        }
                    }
                    .instrument(span),
                );
            }
        });
        Self { asks }
    }

    /// The value of `key`, read together with the keys asked at about the same time.
    pub async fn get(&self, key: K) -> Result<Option<V>, E> {
        let (reply, answer) = oneshot::channel();
        self.asks.send((key, reply)).map_err(|_| Unanswered)?;
        answer.await.map_err(|_| Unanswered)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Debug, PartialEq)]
    enum TestError {
        Down,
        Unanswered,
    }
    impl From<Unanswered> for TestError {
        fn from(_: Unanswered) -> Self {
            TestError::Unanswered
        }
    }

    /// A load that records the keys of each call and takes a permit of `gate` before answering.
    fn gated(gate: Arc<Semaphore>, calls: Arc<Mutex<Vec<Vec<u32>>>>) -> Coalescer<u32, String, TestError> {
        Coalescer::new(1, 3, move |mut keys: Vec<u32>| {
            let (gate, calls) = (gate.clone(), calls.clone());
            async move {
                keys.sort();
                calls.lock().unwrap().push(keys.clone());
                gate.acquire().await.unwrap().forget();
                Ok(keys.into_iter().filter(|k| k % 2 == 0).map(|k| (k, format!("v{k}"))).collect())
            }
        })
    }

    #[tokio::test]
    async fn reads_asked_while_a_load_runs_share_the_next_one_and_each_gets_its_own_answer() {
        let gate = Arc::new(Semaphore::new(0));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(gated(gate.clone(), calls.clone()));
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.get(2).await }
        });
        while calls.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // The one load is running: these wait, and the same key asked twice is read once.
        let later: Vec<_> = [4, 5, 4, 6]
            .into_iter()
            .map(|k| {
                let c = c.clone();
                tokio::spawn(async move { c.get(k).await })
            })
            .collect();
        tokio::task::yield_now().await;
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(Some("v2".to_owned())));
        while calls.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        let answers: Vec<_> =
            futures::future::join_all(later).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            answers,
            vec![Ok(Some("v4".to_owned())), Ok(None), Ok(Some("v4".to_owned())), Ok(Some("v6".to_owned()))]
        );
        assert_eq!(*calls.lock().unwrap(), vec![vec![2], vec![4, 5, 6]]);
    }

    #[tokio::test]
    async fn a_load_takes_at_most_its_key_limit_and_the_rest_go_in_the_next() {
        let gate = Arc::new(Semaphore::new(0));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::new(gated(gate.clone(), calls.clone()));
        let asks: Vec<_> = (10..15)
            .map(|k| {
                let c = c.clone();
                tokio::spawn(async move { c.get(k).await })
            })
            .collect();
        gate.add_permits(2);
        let answers: Vec<_> = futures::future::join_all(asks).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(answers.iter().filter(|a| a.as_ref().unwrap().is_some()).count(), 3);
        let calls = calls.lock().unwrap();
        assert_eq!(*calls, vec![vec![10, 11, 12], vec![13, 14]]);
    }

    #[tokio::test]
    async fn a_failed_load_fails_every_read_in_it_and_a_panicked_one_answers_unanswered() {
        let failing: Coalescer<u32, String, TestError> =
            Coalescer::new(2, 10, |_keys| async { Err(TestError::Down) });
        assert_eq!(failing.get(1).await, Err(TestError::Down));
        let panicking: Coalescer<u32, String, TestError> =
            Coalescer::new(2, 10, |_keys| async { panic!("load failed") });
        assert_eq!(panicking.get(1).await, Err(TestError::Unanswered));
        // The panic took one load, not the coalescer.
        assert_eq!(panicking.get(2).await, Err(TestError::Unanswered));
    }
}

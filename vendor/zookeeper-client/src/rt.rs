//! The sockets and timers the client runs on.
//!
//! With the `tokio` feature they are tokio's, driven by the application's own runtime: the
//! client's session task is spawned on tokio already (through `asyncs`), and with async-io's
//! socket and timers every packet and tick would also pass through async-io's reactor thread,
//! a second thread and a cross-thread wake for each message. Without the feature they are
//! async-io's, as before.

#[cfg(feature = "tokio")]
mod imp {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    /// A TCP stream with the `futures` I/O traits, as `async_net::TcpStream` has.
    pub type TcpStream = Compat<tokio::net::TcpStream>;

    pub async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
        Ok(tokio::net::TcpStream::connect((host, port)).await?.compat())
    }

    /// The subset of `async_io::Timer` the client uses: a future that resolves with the time
    /// it fired; an interval timer fires again each period, a one-shot one never again.
    #[derive(Debug)]
    pub struct Timer {
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        period: Option<Duration>,
    }

    impl Timer {
        pub fn never() -> Self {
            Self { sleep: None, period: None }
        }

        pub fn at(deadline: Instant) -> Self {
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
            Self { sleep: Some(Box::pin(sleep)), period: None }
        }

        pub fn after(duration: Duration) -> Self {
            Self { sleep: Some(Box::pin(tokio::time::sleep(duration))), period: None }
        }

        pub fn interval(period: Duration) -> Self {
            Self { sleep: Some(Box::pin(tokio::time::sleep(period))), period: Some(period) }
        }
    }

    impl Future for Timer {
        type Output = Instant;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Instant> {
            let this = &mut *self;
            let Some(sleep) = this.sleep.as_mut() else {
                return Poll::Pending;
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match this.period {
                Some(period) => {
                    let next = sleep.deadline() + period;
                    sleep.as_mut().reset(next);
                },
                None => this.sleep = None,
            }
            Poll::Ready(Instant::now())
        }
    }

    #[cfg(test)]
    mod tests {
        use std::time::Duration;

        use futures::FutureExt;

        use super::Timer;

        #[tokio::test(start_paused = true)]
        async fn one_shot_fires_once_and_interval_repeats() {
            let mut once = Timer::after(Duration::from_millis(10));
            (&mut once).await;
            assert!((&mut once).now_or_never().is_none());

            let mut tick = Timer::interval(Duration::from_millis(10));
            for _ in 0..3 {
                (&mut tick).await;
            }
            assert!(Timer::never().now_or_never().is_none());
        }
    }
}

#[cfg(not(feature = "tokio"))]
mod imp {
    pub use async_io::Timer;
    pub use async_net::TcpStream;

    pub async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
        TcpStream::connect((host, port)).await
    }
}

pub use imp::*;

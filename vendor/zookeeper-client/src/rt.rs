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
    use std::io::{IoSlice, Result};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncRead as _, AsyncWrite as _, ReadBuf};

    /// A TCP stream with the `futures` I/O traits, as `async_net::TcpStream` has.
    ///
    /// Not `tokio_util::compat::Compat`: that does not forward `poll_write_vectored`, so the
    /// trait's default wrote only the first of the queued requests per call: one `send`
    /// system call per request, however many were waiting.
    #[derive(Debug)]
    pub struct TcpStream(tokio::net::TcpStream);

    pub async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
        Ok(TcpStream(tokio::net::TcpStream::connect((host, port)).await?))
    }

    impl futures::io::AsyncRead for TcpStream {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<Result<usize>> {
            let mut buf = ReadBuf::new(buf);
            std::task::ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
            Poll::Ready(Ok(buf.filled().len()))
        }
    }

    impl futures::io::AsyncWrite for TcpStream {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<Result<usize>> {
            Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
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

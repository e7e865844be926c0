//! The baseline: a bare tonic unary echo, served by a process of its own
//! (`bench --serve-echo`, as the servers are processes of their own) and
//! called with the same concurrency, connections and payload as `post`.

use crate::proto::echo_client::EchoClient;
use crate::proto::echo_server::{Echo, EchoServer};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use tinysns::proto::csce438::Message;
use tonic::{Request, Response, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Echoer;

#[tonic::async_trait]
impl Echo for Echoer {
    async fn echo(&self, req: Request<Message>) -> Result<Response<Message>, Status> {
        Ok(Response::new(req.into_inner()))
    }
}

/// Serves the echo on `listener` until the process is killed; prints the
/// port first, for the parent to read.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<(), BoxError> {
    println!("port {}", listener.local_addr()?.port());
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(Echoer))
        .serve_with_incoming(tinysns::config::incoming(listener))
        .await?;
    Ok(())
}

/// An echo server process, killed when dropped.
pub struct EchoProcess {
    child: Child,
    pub port: u16,
}

impl EchoProcess {
    pub fn start() -> Result<EchoProcess, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve-echo")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok());
        match port {
            Some(port) => Ok(EchoProcess { child, port }),
            None => {
                let _ = child.kill();
                Err(format!("the echo server said {line:?}").into())
            }
        }
    }

    pub fn client(&self) -> Result<EchoClient<tonic::transport::Channel>, BoxError> {
        let ch = super::user::channel(&format!("127.0.0.1:{}", self.port))?;
        Ok(EchoClient::new(ch))
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

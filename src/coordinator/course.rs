//! `csce438.CoordService`: the course's `GetServer`, served beside
//! [`crate::proto::tinysns::Coordinator`] on the same port so that clients
//! written for the course find their master unmodified. It answers from the
//! same [`Table`] with the same rule as our own `GetServer` (the alive master
//! of the user's cluster); only the wire form differs: a signed id, the port
//! as a decimal string, `type` `"master"`. Course clients carry no cluster
//! key; the key layer lets this one method through (`trust::layer`).

use std::sync::Arc;

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::Table;
use crate::error::Error;
use crate::model::UserId;
use crate::proto::csce438::coord_service_server::CoordService;
use crate::proto::csce438::{Id, ServerInfo};

/// What the course's `GetServer(ID{id})` answers, from the table.
pub(super) fn get_server(table: &Table, id: i32) -> Result<ServerInfo, Error> {
    let user = u64::try_from(id)
        .ok()
        .and_then(UserId::new)
        .ok_or_else(|| Error::Invalid(format!("id must be a positive integer, not {id}")))?;
    let cluster = user.cluster(table.clusters()).0;
    let master = table
        .master_of(cluster)
        .ok_or_else(|| Error::Unavailable(format!("no server available for cluster {cluster}")))?;
    // Server ids are validated at registration (a small range); a wider one
    // would be a bug here, not the caller's fault.
    let server_id = i32::try_from(master.server_id)
        .map_err(|_| Error::Internal(format!("server id {} out of range", master.server_id)))?;
    Ok(ServerInfo {
        server_id,
        hostname: master.hostname,
        port: master.port.to_string(),
        r#type: "master".into(),
    })
}

/// The gRPC adapter: the coordinator's table, shared with its own service.
pub(super) struct CourseService {
    table: Arc<Mutex<Table>>,
}

impl CourseService {
    pub(super) fn new(table: Arc<Mutex<Table>>) -> CourseService {
        CourseService { table }
    }
}

#[tonic::async_trait]
impl CoordService for CourseService {
    async fn get_server(&self, request: Request<Id>) -> Result<Response<ServerInfo>, Status> {
        let id = request.get_ref().id;
        let answer = get_server(&*self.table.lock().await, id);
        if let Err(e) = &answer {
            log::debug!("course GetServer({id}): {e}");
        }
        answer.map(Response::new).map_err(Status::from)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::model::{RunId, ServerId};
    use crate::proto::tinysns::{self, Kind, Role};

    const HB: Duration = Duration::from_millis(100);

    /// A heartbeat; `slave`: the in-service slave a master reports (0: none).
    fn beat(
        t: &mut Table,
        (cluster, id): (u32, u32),
        role: Role,
        epoch: u64,
        slave: u32,
        now: Instant,
    ) {
        let info = tinysns::ServerInfo {
            cluster_id: cluster,
            server_id: id,
            hostname: format!("host-{cluster}-{id}"),
            port: 10_000 + cluster * 10 + id,
            kind: Kind::Server as i32,
            role: role as i32,
            ..Default::default()
        };
        let slave = ServerId::from_wire(slave);
        t.heartbeat(&info, epoch, slave, RunId::from_wire(0), now)
            .expect("valid heartbeat");
        t.save().expect("save");
    }

    fn code(r: Result<ServerInfo, Error>) -> tonic::Code {
        Status::from(r.expect_err("refused")).code()
    }

    #[test]
    fn the_masters_address_in_the_courses_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        beat(&mut t, (1, 1), Role::None, 0, 0, t0);
        beat(&mut t, (1, 2), Role::None, 0, 0, t0);
        let want = ServerInfo {
            server_id: 1,
            hostname: "host-1-1".into(),
            port: "10011".into(),
            r#type: "master".into(),
        };
        // Users 1 and 4 both live in cluster 1 of 3.
        assert_eq!(get_server(&t, 1).expect("master"), want);
        assert_eq!(get_server(&t, 4).expect("master"), want);
        // The master takes its slave into service; the slave takes over
        // once the master is silent for a failure window.
        let t1 = t0 + HB * 3;
        beat(&mut t, (1, 1), Role::Master, 1, 2, t1);
        beat(&mut t, (1, 2), Role::Slave, 1, 0, t1);
        let t2 = t1 + HB * 3;
        beat(&mut t, (1, 2), Role::Slave, 1, 0, t2);
        t.check(t2);
        let moved = get_server(&t, 1).expect("promoted slave");
        assert_eq!((moved.server_id, moved.port.as_str()), (2, "10012"));
        assert_eq!(moved.r#type, "master");
    }

    #[test]
    fn no_master_is_unavailable_and_a_bad_id_is_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        beat(&mut t, (1, 1), Role::None, 0, 0, t0);
        assert_eq!(code(get_server(&t, 2)), tonic::Code::Unavailable);
        assert_eq!(code(get_server(&t, 3)), tonic::Code::Unavailable);
        for id in [0, -1, i32::MIN] {
            assert_eq!(code(get_server(&t, id)), tonic::Code::InvalidArgument);
        }
        // A master that went silent is no answer.
        t.check(t0 + HB * 3);
        assert_eq!(code(get_server(&t, 1)), tonic::Code::Unavailable);
    }
}

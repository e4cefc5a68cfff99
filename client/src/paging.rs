//! Whole listings: [`Client::list_all_queues`], [`Client::list_all_topics`]
//! and [`Client::list_all_subscriptions`] call the list RPC page after page,
//! following `next_page_token` until it is empty, and return every item.
//!
//! A listing is a series of calls, not a snapshot. Each page starts after
//! the last item of the previous one (queues and topics by name,
//! subscriptions by id), so no item is listed twice and every item that
//! exists throughout is listed; one created or deleted while the pages are
//! read may or may not be. An error on any page fails the whole listing.

use std::future::Future;

use crate::{Client, Error, pb};

impl Client {
    /// Every queue of a `ListQueues` listing, in name order: the queues
    /// whose name starts with `req.prefix`, read in pages of
    /// `req.page_size` (0: the broker's default of 100; at most 1000) from
    /// `req.page_token` (empty: the first page) to the last.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// use broker_client::pb;
    ///
    /// let queues = client
    ///     .list_all_queues(pb::ListQueuesRequest {
    ///         prefix: "orders".into(),
    ///         page_size: 1000,
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// for queue in &queues {
    ///     println!("{}", queue.name);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_all_queues(
        &self,
        req: pb::ListQueuesRequest,
    ) -> Result<Vec<pb::Queue>, Error> {
        all_pages(req.page_token.clone(), |page_token| {
            let req = pb::ListQueuesRequest {
                page_token,
                ..req.clone()
            };
            async move {
                let page = self.list_queues(req).await?;
                Ok((page.queues, page.next_page_token))
            }
        })
        .await
    }

    /// Every topic of a `ListTopics` listing, in name order, as
    /// [`Client::list_all_queues`] lists queues.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// let topics = client.list_all_topics(Default::default()).await?;
    /// println!("{} topics", topics.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_all_topics(
        &self,
        req: pb::ListTopicsRequest,
    ) -> Result<Vec<pb::Topic>, Error> {
        all_pages(req.page_token.clone(), |page_token| {
            let req = pb::ListTopicsRequest {
                page_token,
                ..req.clone()
            };
            async move {
                let page = self.list_topics(req).await?;
                Ok((page.topics, page.next_page_token))
            }
        })
        .await
    }

    /// Every subscription of a `ListSubscriptions` listing (of `req.topic`
    /// and/or `req.queue` when not empty), in the order of their ids, read
    /// in pages of `req.page_size` from `req.page_token` to the last.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// use broker_client::pb;
    ///
    /// let subscriptions = client
    ///     .list_all_subscriptions(pb::ListSubscriptionsRequest {
    ///         topic: "payments".into(),
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// for s in &subscriptions {
    ///     println!("{} -> {}", s.topic, s.queue);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_all_subscriptions(
        &self,
        req: pb::ListSubscriptionsRequest,
    ) -> Result<Vec<pb::Subscription>, Error> {
        all_pages(req.page_token.clone(), |page_token| {
            let req = pb::ListSubscriptionsRequest {
                page_token,
                ..req.clone()
            };
            async move {
                let page = self.list_subscriptions(req).await?;
                Ok((page.subscriptions, page.next_page_token))
            }
        })
        .await
    }
}

/// Every item of a paged listing: `page` is called with `first_token`,
/// then with each `next_page_token`, and returns a page's items and the
/// next token, until that token is empty.
async fn all_pages<T, F, Fut>(first_token: String, mut page: F) -> Result<Vec<T>, Error>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Error>>,
{
    let mut items = Vec::new();
    let mut page_token = first_token;
    loop {
        let (page_items, next_page_token) = page(page_token).await?;
        items.extend(page_items);
        if next_page_token.is_empty() {
            return Ok(items);
        }
        page_token = next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of `items` in pages of `size`, whose token is the index
    /// of the page's first item; records the tokens it was called with.
    fn pages_of(
        items: &[u32],
        size: usize,
        calls: &mut Vec<String>,
        token: String,
    ) -> Result<(Vec<u32>, String), Error> {
        calls.push(token.clone());
        let start = if token.is_empty() {
            0
        } else {
            token.parse::<usize>().expect("a token of this listing")
        };
        let end = (start + size).min(items.len());
        let next = if end < items.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok((items[start..end].to_vec(), next))
    }

    #[tokio::test]
    async fn follows_every_page_token_to_the_last_page() {
        let items: Vec<u32> = (0..7).collect();
        let mut calls = Vec::new();
        let all = all_pages(String::new(), |token| {
            std::future::ready(pages_of(&items, 3, &mut calls, token))
        })
        .await
        .unwrap();
        assert_eq!(all, items);
        assert_eq!(calls, ["", "3", "6"]);
    }

    #[tokio::test]
    async fn starts_at_the_given_token() {
        let items: Vec<u32> = (0..7).collect();
        let mut calls = Vec::new();
        let rest = all_pages("3".to_owned(), |token| {
            std::future::ready(pages_of(&items, 3, &mut calls, token))
        })
        .await
        .unwrap();
        assert_eq!(rest, [3, 4, 5, 6]);
        assert_eq!(calls, ["3", "6"]);
    }

    #[tokio::test]
    async fn an_empty_listing_is_one_call() {
        let mut calls = 0;
        let all: Vec<u32> = all_pages(String::new(), |_| {
            calls += 1;
            std::future::ready(Ok((Vec::new(), String::new())))
        })
        .await
        .unwrap();
        assert!(all.is_empty());
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn an_error_on_any_page_fails_the_listing() {
        let mut calls = 0;
        let result: Result<Vec<u32>, Error> = all_pages(String::new(), |_| {
            calls += 1;
            std::future::ready(if calls == 1 {
                Ok((vec![1], "next".to_owned()))
            } else {
                Err(Error::Unavailable("restarting".into()))
            })
        })
        .await;
        assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
        assert_eq!(calls, 2);
    }
}
